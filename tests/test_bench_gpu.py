"""bench/bench_gpu.py runs in CI on a CPU (`--smoke`): the GPU table's script stays runnable between the
sessions that have a GPU, and what it measures is checked against the runs it made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_a_cpu_and_counts_what_it_trained(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--out", str(out)],
                   cwd=tmp_path, env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}, check=True,
                   capture_output=True, text=True, timeout=900)
    r = json.loads(out.read_text())
    assert r["gpus"] == 0 and r["smoke"] and r["gpu_vs_cpu"] is None and "gpu" not in r["default_sweep"]
    cpu = r["default_sweep"]["cpu_2_cores"]
    assert cpu["complete"] + cpu["pruned"] == 2 and 0.2 < cpu["best_val_acc"] <= 1.0  # trained: above chance (0.1)
    assert r["trial_latency"]["device"] == "cpu" and r["trial_latency"]["epochs"] == 1
    assert r["trial_latency"]["first_s"] > 0 and r["trial_latency"]["warm_s"] > 0
    t = r["throughput"]
    assert [row["workers_per_device"] for row in t["by_k"]] == [1, 2]
    for row in t["by_k"]:  # every trial finished, and the images are what those trials trained
        assert row["trials"] == 2 * row["workers_per_device"]
        assert row["images"] == row["trials"] * t["epochs"] * t["train_images"] == row["trials"] * 256
        assert row["images_per_s_per_device"] == pytest.approx(row["images"] / row["span_s"], rel=0.01)
        assert row["gpu_busy_fraction"] is None and row["gpu_peak_mem_mb"] is None  # no GPU: not made up
    assert t["best_k"] in (1, 2)
