"""A trainer for bench/gpu_check.sh: hpo's trainer, plus a record of where it ran.

Each trial appends one JSON line to $HPO_PROBE_DIR/<pid>.jsonl: the worker's
CUDA_VISIBLE_DEVICES, what torch sees, the device it trained on, and how long
the trial took (the first trial of a worker pays for CUDA start-up; later ones
reuse the worker's CUDA context and cached dataset).
"""

from __future__ import annotations

import json
import os
import time

import torch

from hpo.train import train as hpo_train


def train(config, report):
    start = time.perf_counter()
    seen = {}

    def probe(step, metrics):
        seen.setdefault("device", torch.cuda.get_device_name(torch.cuda.current_device())
                        if torch.cuda.is_available() else "cpu")
        report(step, metrics)

    try:
        return hpo_train(config, probe)
    finally:
        line = {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device_count": torch.cuda.device_count(), "cuda": torch.cuda.is_available(),
                "device": seen.get("device"), "seconds": round(time.perf_counter() - start, 3),
                "max_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else 0}
        with open(os.path.join(os.environ["HPO_PROBE_DIR"], f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
