"""A full disk is a reason to stop the sweep cleanly, not a traceback: how to recognise one, and a warning before."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

from hpo.errors import HpoError

# Exit code of a worker or agent that stopped because the disk is full (errno ENOSPC).
EXIT_CODE = 28
BYTES_PER_TRIAL = 64 * 1024  # journal + MLflow rows of a 30-epoch trial, with room to spare (bench/RESULTS.md)
LOW_MB = 100


class DiskFull(HpoError):
    """The sweep's folder (or a store) ran out of space; the same command resumes once space is freed."""

    def __init__(self, where: Path | str):
        super().__init__(f"{where}: disk full ({free_mb(where):.0f} MB free); free space and run the same "
                         "command to resume")


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception's chain, or SQLite's "database or disk is full"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "disk is full" in text or "no space left on device" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
