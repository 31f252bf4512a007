"""`hpo.report`: metrics from a sweep's own program to hpo, for programs that do not use wandb.

    import hpo
    for epoch in range(1, epochs + 1):
        ...
        hpo.report(epoch, val_acc=acc, val_loss=loss)

Under `hpo run` each call reaches the sweep at once (Hyperband can stop the program
there). Run by hand, it prints `name=value` lines. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import stat
import sys


def report(step: int, metrics: dict[str, float] | None = None, **more: float) -> None:
    """Report `metrics` (a dict, keywords, or both) at `step` (an epoch: 1, 2, ...)."""
    values = {str(k): float(v) for k, v in {**(metrics or {}), **more}.items()}
    fd = _report_fd()
    if fd is not None:
        os.write(fd, (json.dumps({"step": int(step), "metrics": values}) + "\n").encode())
    else:
        print(" ".join([f"step={int(step)}"] + [f"{k}={v}" for k, v in values.items()]), file=sys.stdout, flush=True)


def _report_fd() -> int | None:
    """The pipe to hpo ($HPO_REPORT_FD is "FD:INODE"), or None when this process does not hold it."""
    fd, _, inode = os.environ.get("HPO_REPORT_FD", "").partition(":")
    try:
        st = os.fstat(int(fd))
    except (ValueError, OSError):
        return None
    return int(fd) if stat.S_ISFIFO(st.st_mode) and str(st.st_ino) == inode else None
