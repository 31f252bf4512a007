"""Is a worker alive, or only not dead? A lease per worker process, on every storage.

A worker that is stopped (SIGSTOP), stuck in the kernel (an NFS stall) or frozen whole keeps its pid, so
waiting for it to exit waits forever. Each worker a controller starts renews a lease, a file the
controller names in `$HPO_ALIVE_FILE` whose mtime it touches every `grace / 6` seconds from a thread
of its own; the controller's Supervisor kills a worker whose file is older than the grace.

The same lease fences the worker off: one that wakes after the grace (SIGCONT, the stall ends) may
already have been judged dead and its trial failed, so it writes nothing more and exits at once
(`guard()`, called before every write of a trial's results, and by the renewing thread itself).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from pathlib import Path

ALIVE_ENV = "HPO_ALIVE_FILE"
EXIT_FENCED = 75  # the worker's lease ran out: it ended itself, its trial belongs to nobody now


def grace_s() -> float:
    """Seconds without a renewal after which a worker counts as hung (`HPO_HEARTBEAT_GRACE_S`, default 60)."""
    value = os.environ.get("HPO_HEARTBEAT_GRACE_S", "60")
    try:
        grace = float(value)
    except ValueError:
        return 60.0
    return grace if grace > 0 else 60.0


class Lease:
    """This process's lease: renewed by a daemon thread, checked by `guard()` before every write."""

    def __init__(self, path: Path, grace: float):
        self.path, self.grace = path, grace
        self.renewed = time.monotonic()  # CLOCK_MONOTONIC runs on while the process is stopped
        self._stop = threading.Event()

    def start(self) -> "Lease":
        self._touch()
        threading.Thread(target=self._renew, name="hpo-lease", daemon=True).start()
        return self

    def expired(self) -> bool:
        """Not renewed for the grace, by this process or by its controller (which renews the leases of the
        workers it paused itself, on Ctrl-Z, when it continues them)."""
        if time.monotonic() - self.renewed < self.grace:
            return False
        age = age_s(self.path)
        return age is None or age >= self.grace

    def _touch(self) -> None:
        try:
            self.path.touch()
        except OSError:  # a full or read-only disk: the controller may judge this worker hung; it is right to
            return
        self.renewed = time.monotonic()

    def _renew(self) -> None:
        interval = max(0.1, self.grace / 6)
        while not self._stop.wait(interval):
            guard()  # woken after the grace: judged dead meanwhile, so end here, before any write
            self._touch()

    def stop(self) -> None:
        self._stop.set()


_lease: Lease | None = None


def start_from_env(fallback: Path | None = None) -> Lease | None:
    """In a worker: start the lease its controller asked for (`$HPO_ALIVE_FILE`), else one at `fallback`
    (`hpo worker` started by hand: no controller reads it, but it still fences the worker off after a stall
    longer than the grace that Optuna's heartbeat fails its trial by). None when there is neither."""
    global _lease
    path = os.environ.get(ALIVE_ENV) or fallback
    if not path or _lease is not None:
        return _lease
    _lease = Lease(Path(path), grace_s()).start()
    if not os.environ.get(ALIVE_ENV):
        atexit.register(Path(path).unlink, missing_ok=True)  # nobody else will read or remove it
    return _lease


def guard() -> None:
    """Before a write of a trial's results: a worker whose lease ran out writes nothing and exits."""
    if _lease is not None and _lease.expired():
        print(f"hpo: worker {os.getpid()}: no lease renewal for {time.monotonic() - _lease.renewed:.0f} s "
              f"(stopped or stalled past the {_lease.grace:.0f}-s grace); its trial was failed meanwhile, "
              "so it writes nothing more and exits", file=sys.stderr, flush=True)
        os._exit(EXIT_FENCED)


def age_s(path: Path) -> float | None:
    """Seconds since a lease file was last renewed; None when the worker has not started its lease yet."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return None
