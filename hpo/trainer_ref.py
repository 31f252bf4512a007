"""A trainer named as `package.module:function`: checked before a sweep writes anything, loaded in each worker."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from typing import Callable

from hpo.errors import UsageError
from hpo.program import PREFIX

BUILTIN = "hpo.train:train"
PROGRAM = PREFIX  # the sweep's own program (hpo.program), its settings as JSON after the colon


def _split(ref: str) -> tuple[str, str]:
    module, _, name = ref.partition(":")
    if not module or not name or ":" in name:
        raise UsageError(f"--trainer: expected package.module:function, got {ref!r}")
    return module, name


def check(ref: str | None) -> None:
    """Refuse a trainer whose module or function is not there, without importing it.

    The controller never imports the trainer (it may pull in torch and CUDA); the module's
    source is read and its top-level names looked up instead. A module that builds its
    names at run time (`from x import *`, compiled) is taken on trust: its workers report.
    """
    if not ref or ref.startswith(PROGRAM):
        return
    module, name = _split(ref)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(f"--trainer: no module named {module!r}")
    names = _top_level_names(found.origin)
    if names is not None and name not in names:
        raise UsageError(f"--trainer: module {module!r} has no function {name!r}")


def _top_level_names(origin: str | None) -> set[str] | None:
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                return None
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif not isinstance(node, ast.Expr):
            return None  # if/try/with at top level may define names: trust the module
    return names


def label(ref: str | None) -> str:
    """What to show for a trainer ref: the program's command, not its JSON."""
    if ref and ref.startswith(PROGRAM):
        from hpo import program

        return "program: " + program.Program.from_ref(ref).describe()
    return ref or ""


BUILTIN = "hpo.train:train"


def load(ref: str | None) -> Callable:
    """`package.module:function` -> the function; None -> hpo's built-in trainer."""
    if not ref or ref == BUILTIN:
        from hpo.train import train

        return train
    if ref.startswith(PROGRAM):
        from hpo import program

        return program.load(ref)
    module, name = _split(ref)
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--trainer: cannot load {ref!r} ({exc})") from None
    if not callable(fn):
        raise UsageError(f"--trainer: {ref!r} is not callable")
    return fn
