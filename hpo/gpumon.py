"""How busy each GPU is, read through NVML (nvidia-ml-py): never a CUDA context.

`Monitor` samples every GPU of the sweep in a thread of the controller: each GPU's
busy fraction over the sweep goes on the parent run, and `--workers-per-gpu auto`
(hpo.packing) decides from its samples. `TrialGpu` does the same in a worker for
its own GPU while one trial runs: the child run gets `gpu_util_mean` and
`gpu_mem_used_peak_mb`. On a machine without NVML (no driver, no GPU) both read
nothing and cost nothing.

GPU ids are the ones slots use (`CUDA_VISIBLE_DEVICES` entries): an index, in
nvidia-smi's order (workers get CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA agrees), or a
`GPU-...` UUID.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

SAMPLE_SECONDS = 0.25
KEEP_SAMPLES = 14_400  # the last hour of samples per GPU (what `auto` reads); the sweep's totals are kept apart


@dataclass(frozen=True)
class Sample:
    t: float  # time.time()
    util: float  # % of the last sample period in which a kernel ran (NVML's utilization.gpu)
    used_mb: float  # device memory in use, every process together
    total_mb: float


class Reader(Protocol):
    """What NVML says about one GPU now; None when it cannot say."""

    def read(self, gpu: str) -> Sample | None: ...


class Nvml:
    """The real reader (pynvml, from nvidia-ml-py)."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self._nv, self._handles = pynvml, {}

    def _handle(self, gpu: str):
        if gpu not in self._handles:
            nv = self._nv
            self._handles[gpu] = (nv.nvmlDeviceGetHandleByUUID(gpu) if gpu.startswith(("GPU-", "MIG-"))
                                  else nv.nvmlDeviceGetHandleByIndex(int(gpu)))
        return self._handles[gpu]

    def read(self, gpu: str) -> Sample | None:
        try:
            h = self._handle(gpu)
            mem = self._nv.nvmlDeviceGetMemoryInfo(h)
            util = self._nv.nvmlDeviceGetUtilizationRates(h).gpu
        except Exception:  # noqa: BLE001 - a MIG slice or a GPU that went away: no reading
            return None
        return Sample(time.time(), float(util), mem.used / 2**20, mem.total / 2**20)


def open_nvml() -> Reader | None:
    """NVML when this machine has a driver; None otherwise (a CPU machine, a container without the library)."""
    try:
        return Nvml()
    except Exception:  # noqa: BLE001 - ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded
        return None


class Monitor:
    """Samples the given GPUs every SAMPLE_SECONDS until `stop()`; the first sample is taken at `start()`."""

    def __init__(self, gpus: list[str], reader: Reader | None, every: float = SAMPLE_SECONDS):
        self.gpus, self.reader, self.every = list(dict.fromkeys(gpus)), reader, every
        self.samples: dict[str, deque[Sample]] = {g: deque(maxlen=KEEP_SAMPLES) for g in self.gpus}
        self.first: dict[str, Sample] = {}  # each GPU's first sample: the memory in use before the sweep's workers
        self.totals: dict[str, list[float]] = {}  # per GPU: samples, sum of utilisation, peak memory in use, total
        self.started = 0.0  # time.time() of the first sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.reader and self.gpus)

    def start(self) -> Monitor:
        self.started = time.time()
        if self.active:
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="hpo-gpumon", daemon=True)
            self._thread.start()
        return self

    def sample(self) -> None:
        for g in self.gpus:
            s = self.reader.read(g)
            if s is not None:
                self.add(g, s)

    def add(self, gpu: str, s: Sample) -> None:
        with self._lock:
            self.samples[gpu].append(s)
            self.first.setdefault(gpu, s)
            n, util, peak, _ = self.totals.get(gpu, (0, 0.0, 0.0, 0.0))
            self.totals[gpu] = [n + 1, util + s.util, max(peak, s.used_mb), s.total_mb]

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def window(self, gpu: str, t0: float = 0.0, t1: float = float("inf")) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples.get(gpu, ()) if t0 <= s.t <= t1]

    def baseline_mb(self, gpu: str) -> float | None:
        """Memory in use before this sweep's workers touched the GPU (the first sample)."""
        with self._lock:
            first = self.first.get(gpu)
            return first.used_mb if first else None

    def peak_mb(self, gpu: str) -> float:
        with self._lock:
            return self.totals[gpu][2] if gpu in self.totals else 0.0

    def summary(self) -> dict[str, dict[str, float]]:
        """Per GPU, over the whole sweep: busy fraction, mean utilisation, peak memory in use, total memory."""
        out = {}
        with self._lock:
            totals = {g: list(t) for g, t in self.totals.items()}
        for g, (n, util, peak, total) in totals.items():
            mean = util / n
            out[g] = {"busy": round(mean / 100, 4), "util_mean": round(mean, 2), "mem_used_peak_mb": round(peak, 1),
                      "mem_total_mb": round(total, 1), "samples": int(n)}
        return out


def own_gpu(env=os.environ) -> str | None:
    """The one GPU a worker was pinned to, or None (CPU worker, or several GPUs)."""
    ids = [g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip() and g.strip() != "-1"]
    return ids[0] if len(ids) == 1 else None


class TrialGpu:
    """A worker's own GPU, sampled while one trial runs: the child run's `gpu_util_mean`, `gpu_mem_used_peak_mb`."""

    _reader: Reader | None = None
    _opened = False

    def __init__(self, gpu: str | None):
        if not TrialGpu._opened:  # once per worker process
            TrialGpu._reader, TrialGpu._opened = (open_nvml() if gpu else None), True
        self.monitor = Monitor([gpu] if gpu else [], TrialGpu._reader).start()

    def finish(self) -> dict[str, float]:
        self.monitor.stop()
        if self.monitor.active:
            self.monitor.sample()  # a trial shorter than one period still gets a reading
        s = self.monitor.summary()
        if not s:
            return {}
        (one,) = s.values()
        return {"gpu_util_mean": one["util_mean"], "gpu_mem_used_peak_mb": one["mem_used_peak_mb"]}
