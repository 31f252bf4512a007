"""GPU slots: which worker sees which GPU.

Slot planning is plain data in, `CUDA_VISIBLE_DEVICES` out: it is tested with
4 or 8 "GPUs" on a machine with none. The controller never initializes CUDA;
it discovers GPUs through CUDA_VISIBLE_DEVICES or NVML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from hpo.errors import UsageError


@dataclass(frozen=True)
class Slot:
    """One worker's place: a name and the one GPU it sees ("" = CPU only)."""

    index: int
    name: str
    cuda_visible_devices: str


def discover_gpus(env: Mapping[str, str] = os.environ, count: Callable[[], int] | None = None) -> list[str]:
    """GPU ids this process may use, without touching CUDA: CUDA_VISIBLE_DEVICES, else every GPU NVML sees."""
    if "CUDA_VISIBLE_DEVICES" in env:
        ids = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",")]
        return [g for g in ids if g and g != "-1"]
    return [str(i) for i in range((count or nvml_count)())]


def nvml_count() -> int:
    """How many GPUs the driver's NVML sees (numbered as nvidia-smi numbers them); 0 without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library, no GPU: a CPU machine
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:  # noqa: BLE001
        return 0
    finally:
        pynvml.nvmlShutdown()


def _found(ids: list[str], env: Mapping[str, str] = os.environ) -> str:
    """`NVML sees GPUs 0, 1` / `CUDA_VISIBLE_DEVICES='' gives no GPU`: where the GPUs came from, for an error."""
    where = (f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} gives" if "CUDA_VISIBLE_DEVICES" in env
             else "NVML sees")
    return f"{where} {'GPUs ' + ', '.join(ids) if ids else 'no GPU'}"


def parse_gpus(value: str | None, discovered: Callable[[], list[str]] = discover_gpus) -> list[str]:
    """None (not given): every GPU found, else CPU workers; `auto` (asked for): every GPU found, at least one;
    `none`; or a list such as `0,2,3` of GPUs that exist here (a wrong index would train on the CPU, 10-100x
    slower, without a word)."""
    if value is None:
        return discovered()
    value = value.strip()
    if value in ("none", ""):
        return []
    found = discovered()
    if value == "auto":
        if not found:
            raise UsageError(f"--gpus: auto found no GPU ({_found(found)}); leave --gpus out or give --gpus none "
                             "for CPU workers")
        return found
    ids = [g.strip() for g in value.split(",")]
    if any(not g.isdigit() for g in ids):
        raise UsageError(f"--gpus: expected auto, none or GPU indices such as 0,2 (got {value!r})")
    if len(set(ids)) != len(ids):
        raise UsageError(f"--gpus: GPU listed twice in {value!r}")
    missing = [g for g in ids if g not in found]
    if missing and all(g.isdigit() for g in found):  # UUIDs or MIG names in CUDA_VISIBLE_DEVICES: not checked
        raise UsageError(f"--gpus: no GPU {missing[0]} here; {_found(found)}")
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
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers GPUs as nvidia-smi and NVML (hpo.gpumon) do
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env
