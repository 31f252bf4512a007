"""An exclusive lock on a folder, for the few steps that must not interleave between processes on one
machine: making a new MLflow store, making a new study's parent run.

`fcntl.flock` on the folder itself (no lock file to leave behind); the kernel drops it when its holder
dies, so a killed controller never leaves a folder locked. Re-entrant within a process: the Session
holds its sweep folder's lock while the store inside it is made under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

_held: dict[str, int] = {}  # folder -> depth, for this process
_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    key = str(Path(folder).resolve())
    with _guard:
        if key in _held:
            _held[key] += 1
            fd = None
        else:
            fd = os.open(key, os.O_RDONLY)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        with _guard:
            _held[key] = 1
    try:
        yield
    finally:
        with _guard:
            _held[key] -= 1
            last = _held[key] == 0
            if last:
                del _held[key]
        if fd is not None and last:
            os.close(fd)  # releases the lock
