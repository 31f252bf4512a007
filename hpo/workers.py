"""GPU slots and the worker processes that fill them.

Slot planning is plain data in, `CUDA_VISIBLE_DEVICES` out: it is tested with
4 or 8 "GPUs" on a machine with none. The controller never initializes CUDA;
it discovers GPUs through CUDA_VISIBLE_DEVICES or nvidia-smi.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from hpo.errors import UsageError


@dataclass(frozen=True)
class Slot:
    """One worker's place: a name and the one GPU it sees ("" = CPU only)."""

    index: int
    name: str
    cuda_visible_devices: str


def discover_gpus(env: Mapping[str, str] = os.environ, smi: str | None = "nvidia-smi") -> list[str]:
    """GPU ids this process may use, without touching CUDA."""
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",")]
        return [g for g in ids if g and g != "-1"]
    exe = shutil.which(smi) if smi else None
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def parse_gpus(value: str, discovered: Callable[[], list[str]] = discover_gpus) -> list[str]:
    """`auto` (every GPU found), `none`, or a list such as `0,2,3`."""
    value = (value or "auto").strip()
    if value == "auto":
        return discovered()
    if value in ("none", ""):
        return []
    ids = [g.strip() for g in value.split(",")]
    if any(not g.isdigit() for g in ids):
        raise UsageError(f"--gpus: expected auto, none or GPU indices such as 0,2 (got {value!r})")
    if len(set(ids)) != len(ids):
        raise UsageError(f"--gpus: GPU listed twice in {value!r}")
    return ids


def plan(gpus: list[str], workers_per_gpu: int = 1, cpu_workers: int | None = None) -> list[Slot]:
    """`len(gpus) * workers_per_gpu` GPU slots, or `cpu_workers` CPU slots when there is no GPU."""
    if workers_per_gpu < 1:
        raise UsageError(f"--workers-per-gpu: must be at least 1 (got {workers_per_gpu})")
    if gpus:
        return [Slot(i * workers_per_gpu + k, f"gpu{g}-w{k}", g)
                for i, g in enumerate(gpus) for k in range(workers_per_gpu)]
    n = default_cpu_workers() if cpu_workers is None else cpu_workers
    if n < 1:
        raise UsageError(f"--workers: must be at least 1 (got {n})")
    return [Slot(i, f"cpu{i}", "") for i in range(n)]


def default_cpu_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def threads_per_worker(slots: list[Slot]) -> int:
    """CPU threads each worker may use so that workers do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, len(slots)))


def slot_env(slot: Slot, base: Mapping[str, str], threads: int) -> dict[str, str]:
    """The environment of a slot's worker: its one GPU, its share of CPU threads."""
    env = dict(base)
    env["CUDA_VISIBLE_DEVICES"] = slot.cuda_visible_devices
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Worker:
    slot: Slot
    proc: subprocess.Popen
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


class Pool:
    """One process per slot; reports exits so the controller can fail and replace."""

    def __init__(self, slots: list[Slot], argv: Callable[[Slot], list[str]],
                 env: Callable[[Slot], dict[str, str]], log_dir: Path):
        self.slots, self._argv, self._env, self.log_dir = slots, argv, env, log_dir
        self.workers: dict[int, Worker] = {}
        self.restarts_at: dict[int, float] = {}  # slot index -> when its worker last started

    def start(self, slot: Slot) -> Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{slot.name}.log", "ab") as log:
            # Own session: Ctrl-C reaches the controller only, which stops workers in order.
            proc = subprocess.Popen(self._argv(slot), env=self._env(slot), stdout=log,
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
        return self.reap()


def worker_argv(study: str, slot: Slot, parent_pid: int, extra: list[str] = ()) -> list[str]:
    """The argv of a slot's worker (secrets such as the storage URL travel in the env, not here)."""
    return [sys.executable, "-m", "hpo", "worker", "--study", study, "--name", slot.name,
            "--parent-pid", str(parent_pid), *extra]
