"""YAML that cannot execute anything, explode in memory, or hide binary junk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hpo.errors import SpecError

MAX_BYTES = 1 << 20  # a sweep file is a page of text; anything bigger is a mistake
MAX_ALIASES = 100  # enough for real configs, far too few for a "billion laughs" bomb


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


def load_text(text: str, label: str = "sweep") -> Any:
    """Parse YAML text safely; errors become `label: line N: problem`."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise SpecError([f"{label}: {where}{exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise SpecError([f"{label}: {exc}"]) from None
    except RecursionError:
        raise SpecError([f"{label}: nested too deeply"]) from None


def load_file(path: str | Path, label: str | None = None) -> Any:
    """Read and parse a YAML file; every failure is a SpecError with one line."""
    path = Path(path)
    label = label or path.name
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([f"{label}: the file is {size:,} bytes; a sweep file must be under {MAX_BYTES:,}"])
        data = path.read_bytes()
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
    return load_text(text, label)
