"""hpo program mode: what `wandb.log` logs also reaches hpo, while it is logged.

hpo puts this folder first on a trial program's PYTHONPATH. Python runs it at start-up;
it imports nothing heavy and changes nothing until the program imports wandb, then wraps
`wandb.Run.log` to write each call's numbers as one JSON line to $HPO_REPORT_FD.
It stands alone (no `import hpo`): the program may run on another interpreter.
Another sitecustomize later on sys.path still runs.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_FD = os.environ.get("HPO_REPORT_FD")
_TARGET = "wandb.sdk.wandb_run"


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
    state = {"n": 0}

    def log(self, data, step=None, commit=None, *args, **kwargs):
        result = original(self, data, step, commit, *args, **kwargs)
        try:
            numbers = _numbers(data)
            if "epoch" in numbers:
                at = int(numbers["epoch"])
            elif step is not None:
                at = int(step)
            else:
                at = state["n"] + 1  # W&B's history row this call goes to, counted from 1
            if step is None and commit is not False:
                state["n"] += 1
            if numbers:
                os.write(int(_FD), (json.dumps({"step": at, "metrics": numbers}) + "\n").encode())
        except (OSError, ValueError, TypeError):
            pass
        return result

    log.__wrapped__ = original
    run_class.log = log


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


if _FD:
    sys.meta_path.insert(0, _Finder())
try:
    _chain()
except Exception:  # noqa: BLE001 - someone else's start-up file must not stop the trial
    pass
