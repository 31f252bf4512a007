"""YAML that cannot execute anything, explode in memory, or hide binary junk."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import SpecError

MAX_BYTES = 1 << 20  # a sweep file is a page of text; anything bigger is a mistake
MAX_ALIASES = 100  # enough for real configs
# A "billion laughs" bomb needs fewer than 100 aliases (9 levels of 9); what gives it away
# is the size of the tree once every alias is expanded, so that is capped too.
MAX_NODES = 100_000


# YAML 1.1 (PyYAML) reads an unquoted 1e-4 as text: its floats need a dot. YAML 1.2, and every
# person who writes it, reads a number: hpo does too. A quoted '1e-4' stays text.
EXPONENT_TEXT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader (no python/* tags) that also caps alias expansion."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*refs)")
        return super().compose_node(parent, index)

    def construct_yaml_str(self, node):  # type: ignore[override]
        value = super().construct_yaml_str(node)
        if node.style is None and EXPONENT_TEXT.match(value):
            return float(value)
        return value

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        # PyYAML keeps the last of two equal keys; a second `lr:` is a mistake, not an override.
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice", key.start_mark)
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):  # type: ignore[override]
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_NODES:
            raise yaml.YAMLError(f"more than {MAX_NODES:,} values once its aliases (*refs) are expanded")
        return node


_Loader.add_constructor("tag:yaml.org,2002:str", _Loader.construct_yaml_str)


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Nodes in the tree with every alias expanded; shared nodes are counted once per use."""
    if id(node) in seen:
        if seen[id(node)] < 0:
            raise yaml.YAMLError("an alias (*ref) points into the block that contains it")
        return seen[id(node)]
    seen[id(node)] = -1  # in progress: meeting it again means it contains itself
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, seen)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, seen) + _expanded_size(value, seen)
            if size > MAX_NODES:
                break
    seen[id(node)] = size
    return size


def one_line(text: str) -> str:
    """`text` with newlines and other control characters escaped: a problem is one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _explain(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or exc.context or "not valid YAML"
    if problem.startswith("could not determine a constructor for the tag"):
        tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
        return f"tag {tag} is not allowed; a sweep file holds plain data"
    if problem == "but found another document":
        return "a second YAML document (---); a sweep file holds one"
    return one_line(problem)


def load_text(text: str, label: str = "sweep") -> Any:
    """Parse YAML text safely; errors become `label: line N: problem`."""
    label = one_line(label)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise SpecError([f"{label}: {where}{_explain(exc)}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{label}: {exc}"]) from None
    except RecursionError:
        raise SpecError([f"{label}: nested too deeply"]) from None


def load_file(path: str | Path, label: str | None = None) -> Any:
    """Read and parse a YAML file; every failure is a SpecError with one line."""
    return load_text(read_file(path, label), one_line(label or Path(path).name))


def read_file(path: str | Path, label: str | None = None) -> str:
    """A sweep file's text, read once (a pipe or FIFO cannot be read twice) and at most MAX_BYTES of it
    (the size a device or a pipe reports is 0: the cap counts the bytes read)."""
    path = Path(path)
    label = one_line(label or path.name)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise SpecError([f"{label}: more than {MAX_BYTES:,} bytes; a sweep file must be under {MAX_BYTES:,}"])
    except FileNotFoundError:
        raise SpecError([f"{label}: no such file ({path})"]) from None
    except IsADirectoryError:
        raise SpecError([f"{label}: is a folder, not a file"]) from None
    except PermissionError:
        raise SpecError([f"{label}: cannot be read (permission denied)"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{label}: not UTF-8 text (bad byte at offset {exc.start})"]) from None
    if "\x00" in text:
        raise SpecError([f"{label}: contains NUL bytes; not a text file"])
    return text
