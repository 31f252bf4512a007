"""`--workers-per-gpu auto`: how many workers share each GPU, decided from measurement.

Every GPU starts with one worker. The controller watches what NVML sees of that
GPU from the end of the worker's first trial (which pays for CUDA's start-up) to
the end of its latest one, gaps between trials included (they are the idle time
more workers would fill). Once that window holds PROBE_TRIALS finished trials and
at least MIN_WINDOW_S seconds of samples, it decides:

    by_util = ceil(TARGET_BUSY / utilisation)         workers to keep the GPU busy
    by_mem  = floor((HEADROOM * total - baseline) / per_worker)
    workers = clamp(min(by_util, by_mem), 1, cap)

`per_worker` is the memory the first worker made the GPU use (NVML's used memory
above what was in use before the sweep: its CUDA context and cached blocks
included, which torch.cuda.max_memory_allocated leaves out). The decision is
printed, tagged on the parent run (`hpo.workers_per_gpu`, `hpo.packing`), and the
controller starts the extra workers. The arithmetic is plain data, tested with
logical GPUs on a CPU machine.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from hpo import keys
from hpo.errors import UsageError
from hpo.slots import Slot

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from hpo.gpumon import Monitor

PROBE_TRIALS = 2
MIN_WINDOW_S = 1.0  # NVML samples every 0.25 s: a default-sweep trial on a GPU (0.1 s) is shorter than one
TARGET_BUSY = 0.9
HEADROOM = 0.9  # of the GPU's memory that workers may fill
DEFAULT_CAP = 4


def parse(value: str | int) -> tuple[int, int | None]:
    """`--workers-per-gpu`: N, `auto` (cap DEFAULT_CAP) or `auto:CAP` -> (workers to start with, cap or None)."""
    text = str(value).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        cap = text.partition(":")[2] or str(DEFAULT_CAP)
        if not cap.isdigit() or int(cap) < 1:
            raise UsageError(f"--workers-per-gpu: auto:CAP needs a whole number of 1 or more (got {value!r})")
        return 1, int(cap)
    if not text.lstrip("-").isdigit():
        raise UsageError(f"--workers-per-gpu: expected a number, auto or auto:CAP (got {value!r})")
    n = int(text)
    if n < 1:
        raise UsageError(f"--workers-per-gpu: must be at least 1 (got {n})")
    return n, None


@dataclass(frozen=True)
class Decision:
    gpu: str
    workers: int
    by_util: int
    by_mem: int
    cap: int
    util: float  # %, mean over the window
    per_worker_mb: float
    total_mb: float
    trial: int  # the last trial of the window
    seconds: float = 0.0  # the window's length

    def line(self) -> str:
        return (f"GPU {self.gpu}: one worker kept it {self.util:.0f}% busy over {self.seconds:.1f} s and used "
                f"{self.per_worker_mb:,.0f} MiB of {self.total_mb:,.0f} MiB (to trial {self.trial}); {self.workers} worker(s) "
                f"(busy: {self.by_util}, memory: {self.by_mem}, cap: {self.cap})")


def decide(gpu: str, util: float, per_worker_mb: float, total_mb: float, baseline_mb: float, cap: int,
           trial: int = -1, seconds: float = 0.0) -> Decision:
    """The number of workers for one GPU from one worker's utilisation (%) and memory."""
    by_util = 1 if util >= TARGET_BUSY * 100 else math.ceil(TARGET_BUSY * 100 / max(util, 1.0))
    room = HEADROOM * total_mb - baseline_mb
    by_mem = max(1, math.floor(room / max(per_worker_mb, 1.0)))
    workers = max(1, min(by_util, by_mem, cap))
    return Decision(gpu, workers, by_util, by_mem, cap, round(util, 1), round(per_worker_mb, 1),
                    round(total_mb, 1), trial, round(seconds, 2))


class Packer:
    """Watches each GPU's first worker and grows the pool once per GPU; the Optuna engine's loop calls `step`."""

    def __init__(self, slots: list[Slot], cap: int, monitor: Monitor,
                 record: Callable[[list[Decision]], None] = lambda ds: None):
        self.cap, self.monitor, self.record = cap, monitor, record
        self.first = {s.cuda_visible_devices: s.name for s in slots if s.cuda_visible_devices}
        self.decisions: dict[str, Decision] = {}
        self.host = socket.gethostname()

    def pending(self) -> bool:
        return len(self.decisions) < len(self.first)

    def added(self, trials: list[FrozenTrial], next_index: int) -> list[Slot]:
        """Decide for each GPU whose probe is done; the slots of its extra workers (the pool starts them)."""
        new: list[Slot] = []
        for gpu, worker in self.first.items():
            if gpu in self.decisions:
                continue
            done = self._probe_trials(trials, worker)
            if len(done) < PROBE_TRIALS:
                continue
            d = self._measure(gpu, done)
            if d is None:
                continue
            self.decisions[gpu] = d
            print(f"hpo: --workers-per-gpu auto: {d.line()}", file=sys.stderr)
            new += [Slot(next_index + len(new) + k - 1, f"gpu{gpu}-w{k}", gpu) for k in range(1, d.workers)]
            self.record([self.decisions[g] for g in self.first if g in self.decisions])  # in the GPUs' order
        return new

    def _probe_trials(self, trials: list[FrozenTrial], worker: str) -> list[FrozenTrial]:
        """The finished trials of this run's first process in the slot: not a resumed sweep's older trials (their
        slot names repeat), nor those of a worker started again in its place (it pays CUDA's start-up again)."""
        from optuna.trial import TrialState  # here: `hpo status` plans a sweep without loading Optuna

        mine = sorted((t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                       and t.user_attrs.get(keys.WORKER) == worker and t.user_attrs.get(keys.HOST) == self.host
                       and t.datetime_start and t.datetime_complete
                       and t.datetime_start.timestamp() >= self.monitor.started - 1.0),
                      key=lambda t: t.datetime_complete)
        return [t for t in mine if t.user_attrs.get(keys.PID) == mine[0].user_attrs.get(keys.PID)] if mine else []

    def _measure(self, gpu: str, done: list[FrozenTrial]) -> Decision | None:
        """From the end of the first trial to the end of the last; None until that is long enough."""
        t0, t1 = done[0].datetime_complete.timestamp(), done[-1].datetime_complete.timestamp()
        baseline = self.monitor.baseline_mb(gpu)
        if baseline is None:  # no NVML here: one worker per GPU, as without auto
            return Decision(gpu, 1, 1, 1, self.cap, 0.0, 0.0, 0.0, done[-1].number)
        window = self.monitor.window(gpu, t0, t1)
        if t1 - t0 < MIN_WINDOW_S or len(window) < 2:
            return None  # more trials first
        util = sum(s.util for s in window) / len(window)
        per_worker = self.monitor.peak_mb(gpu) - baseline
        return decide(gpu, util, per_worker, window[0].total_mb, baseline, self.cap, done[-1].number, t1 - t0)


def tags(decisions: list[Decision]) -> dict[str, str]:
    """What the parent run records: the workers per GPU, and the measurements behind them."""
    per_gpu = {d.gpu: d.workers for d in decisions}
    counts = set(per_gpu.values())
    summary = str(counts.pop()) if len(counts) == 1 else ",".join(f"{g}:{n}" for g, n in per_gpu.items())
    return {keys.WORKERS_PER_GPU: summary,
            keys.PACKING: json.dumps([asdict(d) for d in decisions])}
