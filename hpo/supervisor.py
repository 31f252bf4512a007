"""One Supervisor for every engine's local worker pool.

Each poll: kill a hung worker (its lease ran out, `hpo.liveness`), reap the workers that ended, tell the
sweep what each death means (a full disk stops it; otherwise the dead worker's trial is failed and the
crash-loop rule counts it), and start a replacement where the engine wants one. The engine only says
how to fail a dead worker's trials in its own bookkeeping (`on_gone`) and whether to restart a slot.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Protocol

from hpo import diskspace, liveness
from hpo.errors import HpoError
from hpo.tracking import EXIT_UNREACHABLE
from hpo.worker_pool import Exit, Pool
from hpo.slots import Slot


class Port(Protocol):
    """What the Supervisor tells the sweep (hpo.session.Session implements it)."""

    def worker_gone(self, worker: str, pid: int, reason: str, detail: str) -> int: ...
    def worker_exited(self, what: str, log: str = "", pool: int = 0) -> None: ...


OnGone = Callable[[Exit, str, str], int]  # (exit, reason, detail) -> trials it failed


class Supervisor:
    def __init__(self, pool: Pool, port: Port, on_gone: OnGone | None = None,
                 restart: Callable[[Slot], bool] = lambda slot: False, grace: float | None = None):
        self.pool, self.port = pool, port
        self.on_gone = on_gone or (lambda e, reason, detail: port.worker_gone(e.slot.name, e.pid, reason, detail))
        self.restart = restart
        self.grace = liveness.grace_s() if grace is None else grace
        self.hung: dict[int, str] = {}  # pid -> why it was killed

    def start_all(self) -> None:
        self.pool.start_all()

    def poll(self) -> None:
        """One round: hung workers killed, ended ones reaped, their trials failed, slots restarted."""
        self.kill_hung()
        for e in self.pool.reap():
            if e.code == diskspace.EXIT_CODE:
                raise diskspace.DiskFull(self.pool.log_dir.parent)
            if e.code == EXIT_UNREACHABLE:  # not a crash loop: the server is gone; nothing more can be logged
                raise HpoError(f"--tracking-uri: the tracking server stopped answering ({e.slot.name}: see "
                               f"{self.pool.log_dir / (e.slot.name + '.log')}); run the same command once it answers")
            reason, detail = self.classify(e)
            failed = self.on_gone(e, reason, detail)
            if e.died or failed:  # exit 0 with a trial still running (a trainer's sys.exit(0)) is a death too
                self.port.worker_exited(detail, str(self.pool.log_dir / f"{e.slot.name}.log"), len(self.pool.slots))
                if self.restart(e.slot):
                    self.pool.start(e.slot)

    def classify(self, e: Exit) -> tuple[str, str]:
        """(reason, detail) for a worker that ended: `worker hung` when this Supervisor killed it."""
        if e.pid in self.hung:
            return "worker hung", f"{self.hung.pop(e.pid)} on {e.slot.name}"
        if e.code == liveness.EXIT_FENCED:
            return "worker hung", f"worker stalled past its lease and ended itself on {e.slot.name}"
        if e.code == 0:
            return "worker died", f"worker exited (exit code 0) before its trial ended on {e.slot.name}"
        return "worker died", f"{e.describe()} on {e.slot.name}"

    def kill_hung(self) -> list[int]:
        """SIGKILL (the whole process group) every worker whose lease is older than the grace."""
        killed = []
        for w in list(self.pool.workers.values()):
            age = liveness.age_s(self.pool.alive_file(w.slot))
            if age is None or age < self.grace or w.proc.poll() is not None:
                continue
            self.hung[w.proc.pid] = f"worker hung (no lease renewal for {age:.0f} s)"
            try:
                os.killpg(w.proc.pid, signal.SIGKILL)  # its own session: the trainer's children go too
            except ProcessLookupError:
                pass
            killed.append(w.proc.pid)
        return killed

    def stop(self, interrupted: bool) -> list[Exit]:
        """Stop every worker (each ends its own trial); fail what one that had to be killed left running."""
        exits = self.pool.stop()
        for e in exits:
            if e.died:
                detail = "the sweep was interrupted" if interrupted else f"{e.describe()} on {e.slot.name}"
                self.on_gone(e, "interrupted" if interrupted else "worker died", detail)
        return exits
