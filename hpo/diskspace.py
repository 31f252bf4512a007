"""A disk that refuses writes (full, read-only, no permission, failing) is a reason to stop the sweep cleanly,
not a traceback: how to recognise one, the one line that says what to do, and a warning before."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hpo.errors import HpoError

# Exit code of a worker or agent that stopped because the disk is full (errno ENOSPC).
EXIT_CODE = 28
BYTES_PER_TRIAL = 64 * 1024  # journal + MLflow rows of a 30-epoch trial, with room to spare (bench/RESULTS.md)
LOW_MB = 100


# What a refused write is, by errno and by the words SQLite and others use for it.
KINDS = (
    ("disk full", (errno.ENOSPC, errno.EDQUOT), ("disk is full", "no space left on device")),
    ("read-only", (errno.EROFS,), ("read-only file system", "readonly database")),
    ("permission denied", (errno.EACCES, errno.EPERM), ("permission denied",)),
    ("I/O error", (errno.EIO,), ("disk i/o error", "input/output error")),
)
WHAT_TO_DO = {
    "disk full": "free space",
    "read-only": "make it writable again (remount, or check the network mount)",
    "permission denied": "give this user write access",
    "I/O error": "check the disk or the network mount",
}


class DiskFull(HpoError):
    """The sweep's folder (or a store) refused a write: full, read-only, not ours, or failing. The same
    command resumes once that is mended. `exc`: the error met (else the folder is probed for it)."""

    def __init__(self, where: Path | str, exc: BaseException | None = None):
        kind = fault(exc) or fault(probe(where)) or "disk full"
        what = f"disk full ({free_mb(where):.0f} MB free)" if kind == "disk full" else kind
        super().__init__(f"{where}: {what}; {WHAT_TO_DO[kind]} and run the same command to resume")


def fault(exc: BaseException | None) -> str | None:
    """The kind of refused write anywhere in the exception's chain ("disk full", "read-only", ...), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        for kind, codes, words in KINDS:
            if (isinstance(exc, OSError) and exc.errno in codes) or any(w in text for w in words):
                return kind
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether the error is a disk refusing writes (any of KINDS): the sweep stops with one line, resumable."""
    return fault(exc) is not None


def probe(where: Path | str) -> OSError | None:
    """Try one small write in the folder (or its nearest existing parent): the error a write meets there now."""
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        with tempfile.TemporaryFile(dir=path) as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc
    return None


def free_mb(where: Path | str) -> float:
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return float("nan")


def warn_if_low(where: Path | str, trials: int) -> None:
    """One warning line when the sweep's folder has less room than the budget needs."""
    need = LOW_MB + trials * BYTES_PER_TRIAL / 2**20
    free = free_mb(where)
    if free < need:
        print(f"hpo: warning: {where}: {free:.0f} MB free, about {need:.0f} MB needed for {trials} trials; "
              "a full disk stops the sweep (the same command then resumes)", file=sys.stderr)
