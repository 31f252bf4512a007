"""Worker processes: one per slot, each in its own session, reaped and replaced by the controller."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hpo import forkserver
from hpo.liveness import ALIVE_ENV
from hpo.slots import Slot


@dataclass
class Worker:
    slot: Slot
    proc: subprocess.Popen | forkserver.Forked
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Exit:
    slot: Slot
    pid: int
    code: int

    @property
    def died(self) -> bool:
        return self.code != 0

    def describe(self) -> str:
        if self.code < 0:
            return f"worker died (signal {signal.Signals(-self.code).name})"
        return f"worker died (exit code {self.code})"


_pools: "weakref.WeakSet[Pool]" = weakref.WeakSet()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (a worker's programs and what they forked), from /proc; [] without /proc."""
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in map(int, children):
        out += [child, *descendants(child)]
    return out


def pause_workers() -> list[int]:
    """Ctrl-Z: SIGSTOP every local worker and everything below it, and the pool's fork server (they run in
    sessions of their own, so the terminal's SIGTSTP reaches only the controller). Returns the pids to
    continue."""
    stopped = []
    for pool in list(_pools):
        procs = [w.proc for w in pool.workers.values()] + ([pool.server.proc] if pool.server else [])
        for proc in procs:
            if proc.poll() is None:
                for pid in (proc.pid, *descendants(proc.pid)):
                    try:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                    except ProcessLookupError:
                        pass
    return stopped


def resume_workers(stopped: list[int]) -> None:
    """`fg` / SIGCONT: renew every worker's lease first (the pause was its controller's, not a hang: neither
    the Supervisor nor the worker's own guard may judge it stale), then continue them."""
    for pool in list(_pools):
        for w in list(pool.workers.values()):
            try:
                pool.alive_file(w.slot).touch()
            except OSError:
                pass
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class Pool:
    """One process per slot; reports exits so the controller can fail and replace."""

    def __init__(self, slots: list[Slot], argv: Callable[[Slot], list[str]],
                 env: Callable[[Slot], dict[str, str]], log_dir: Path, preload: list[str] | None = None,
                 server: forkserver.ForkServer | None = None):
        """`preload`: modules a fork server imports once for every worker of the pool (hpo.forkserver);
        None starts each worker with `subprocess.Popen`. `server`: a fork server of the caller's own."""
        self.slots, self._argv, self._env, self.log_dir = slots, argv, env, log_dir
        self.workers: dict[int, Worker] = {}
        self.restarts_at: dict[int, float] = {}  # slot index -> when its worker last started
        if server is None and preload is not None and forkserver.enabled():
            server = forkserver.ForkServer(preload)
        self.server = server
        _pools.add(self)

    def alive_file(self, slot: Slot) -> Path:
        """The slot's lease (hpo.liveness): its worker renews it, the Supervisor reads its age."""
        return self.log_dir / f"{slot.name}.alive"

    def start(self, slot: Slot) -> Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        alive = self.alive_file(slot)
        alive.unlink(missing_ok=True)  # the last worker's: not judged until the new one renews it
        env = {**self._env(slot), ALIVE_ENV: str(alive.resolve())}
        argv, log_path = self._argv(slot), self.log_dir / f"{slot.name}.log"
        if self.server is not None and self.server.can_start(argv, env):
            self.workers[slot.index] = Worker(slot, self.server.spawn(argv, env, log_path))
            self.restarts_at[slot.index] = time.monotonic()
            return self.workers[slot.index]
        with open(log_path, "ab") as log:
            # Own session: Ctrl-C reaches the controller only, which stops workers in order.
            proc = subprocess.Popen(argv, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.workers[slot.index] = Worker(slot, proc)
        self.restarts_at[slot.index] = time.monotonic()
        return self.workers[slot.index]

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def reap(self) -> list[Exit]:
        """Workers that exited since the last call (they leave the pool)."""
        out = []
        for index, w in list(self.workers.items()):
            code = w.proc.poll()
            if code is not None:
                out.append(Exit(w.slot, w.proc.pid, code))
                del self.workers[index]
                self.alive_file(w.slot).unlink(missing_ok=True)  # a finished sweep leaves no leases behind
        return out

    def fill(self) -> int:
        """Start a worker in every empty slot; return how many were started."""
        empty = [s for s in self.slots if s.index not in self.workers]
        for slot in empty:
            self.start(slot)
        return len(empty)

    def alive(self) -> int:
        return sum(w.proc.poll() is None for w in self.workers.values())

    def stop(self, grace: float = 8.0) -> list[Exit]:
        """SIGTERM every worker (each ends its trial as interrupted), SIGKILL after `grace` s."""
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for w in self.workers.values():
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        out = self.reap()
        self.close()
        return out

    def close(self) -> None:
        """End the fork server (its workers are the controller's children and go on without it)."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
