"""hpo program mode: what `wandb.log` logs also reaches hpo, while it is logged.

hpo puts this folder first on a trial program's PYTHONPATH. Python runs it at start-up;
it imports nothing heavy and changes nothing until the program imports wandb, then wraps
`wandb.Run.log` to write each call's numbers as one JSON line to the pipe named by
$HPO_REPORT_FD ("FD:INODE"; a process that inherited the variable but not the pipe writes
nothing). It stands alone (no `import hpo`): the program may run on another interpreter.
Another sitecustomize later on sys.path still runs.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import stat
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_TARGET = "wandb.sdk.wandb_run"


def _report_fd():
    """The pipe to hpo, or None when this process does not hold it."""
    fd, _, inode = os.environ.get("HPO_REPORT_FD", "").partition(":")
    try:
        st = os.fstat(int(fd))
    except (ValueError, OSError):
        return None
    return int(fd) if stat.S_ISFIFO(st.st_mode) and str(st.st_ino) == inode else None


def _send(message):
    fd = _report_fd()
    if fd is not None:
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
        except (OSError, ValueError, TypeError):
            pass


def _numbers(data, prefix=""):
    out = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, name + "."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0):
            try:
                out[name] = float(value)
            except (TypeError, ValueError):
                pass
    return out


def _wrap(run_class):
    original = run_class.log

    def log(self, data, *args, **kwargs):
        result = original(self, data, *args, **kwargs)
        try:
            numbers = _numbers(data)
        except Exception:  # noqa: BLE001 - whatever was logged, the program goes on
            numbers = {}
        if numbers:
            _send({"metrics": numbers})  # hpo numbers the reports (W&B's hyperband counts them too)
        return result

    log.__wrapped__ = original
    run_class.log = log
    _send({"hello": "wandb"})  # from here on, hpo reads metrics from wandb.log, not from stdout


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            if hasattr(module, "Run"):
                _wrap(module.Run)

        spec.loader.exec_module = exec_module
        return spec


def _chain():
    """Run the next sitecustomize on sys.path, the one this file hides."""
    rest = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if _report_fd() is not None:
    sys.meta_path.insert(0, _Finder())
try:
    _chain()
except Exception:  # noqa: BLE001 - someone else's start-up file must not stop the trial
    pass
