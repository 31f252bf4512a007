"""Do GPUs earn their place? The issue-12 table, on whatever this machine has.

    python bench/bench_gpu.py            # the full table (a GPU machine: bench/gpu_check.sh runs it)
    python bench/bench_gpu.py --smoke    # small sizes, CPU: what CI runs (tests/test_bench_gpu.py)

Rows:
  1. the default sweep (sweep.yaml, digits, 30 trials) on every GPU (1 worker per GPU, and
     `--workers-per-gpu auto`) vs the same on 2 CPU cores;
  2. a warm trial of the default MLP (27 epochs, in-process), and the first one (CUDA init, data to device);
  3. resnet18 on `synthetic_cifar10` (no download): images/s per GPU with K = 1, 2, 4 workers per GPU,
     from the trials' own MLflow runs (images trained / (last end - first start)), and with `auto`;
  4. how busy the GPU was during the best K (`nvidia-smi` sampled every 200 ms: NVML's utilisation).
On a machine without a GPU rows 1 and 4 have only their CPU side and row 3 runs the `cnn` on CPU workers.
Writes bench/results/gpu_<device>.json (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, machine, timed

sys.path.insert(0, str(ROOT))

THROUGHPUT = """
name: {name}
method: grid
metric: {{name: val_acc, goal: maximize}}
parameters:
  dataset: {{value: synthetic_cifar10}}
  model: {{value: {model}}}
  epochs: {{value: {epochs}}}
  batch_size: {{value: {batch}}}
  max_train_samples: {{value: {n_train}}}
  max_eval_samples: {{value: {n_eval}}}
  lr: {{value: 0.001}}
  seed: {{values: {seeds}}}
command: [python, -m, hpo.train, "${{args}}"]
"""


def gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return len(out.stdout.strip().splitlines()) if out.returncode == 0 else 0
    except OSError:
        return 0


class Busy:
    """The GPUs' utilisation (%) sampled by `nvidia-smi` every 200 ms while a block runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self):
        if gpus():
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                           "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line.strip()))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def busy_fraction(self) -> float | None:
        """Share of samples above 0 % (at least one kernel ran in the sample's window), and the mean."""
        return round(sum(s > 0 for s in self.samples) / len(self.samples), 3) if self.samples else None

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def default_sweep(cwd: Path, trials: int, on_gpu: bool, per_gpu: str = "1") -> dict:
    (cwd / "sweep.yaml").write_text((ROOT / "sweep.yaml").read_text())
    where = ["--gpus", "auto", "--workers-per-gpu", per_gpu] if on_gpu else ["--gpus", "none", "--workers", "2"]
    study = f"default-{'gpu' if on_gpu else 'cpu'}-{per_gpu.replace(':', '')}"
    took, out = timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--study", study, "--trials", str(trials),
                       *where, "--keep-models", "0", "--no-report", "--no-progress", "--json"], cwd,
                      {} if on_gpu else {"CUDA_VISIBLE_DEVICES": ""})
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": round(took, 2), "complete": summary["complete"], "pruned": summary["pruned"],
            "best_val_acc": summary["best_value"], **_gpu_fields(summary)}


def _gpu_fields(summary: dict) -> dict:
    """What the controller's NVML saw (`gpus`) and what `--workers-per-gpu auto` decided (`packing`)."""
    out = {}
    if summary.get("gpus"):
        out["nvml_busy"] = {g: v["busy"] for g, v in summary["gpus"].items()}
    if summary.get("packing"):
        out["auto_decision"] = summary["packing"]
    return out


def warm_trial(epochs: int) -> dict:
    """The default MLP twice in this process: the first pays CUDA's start and the data's copy."""
    from hpo import train

    config = {"model": "mlp", "hidden": 128, "epochs": epochs, "lr": 0.003}
    start = time.perf_counter()
    train.train(config)
    first = time.perf_counter() - start
    start = time.perf_counter()
    metrics = train.train(config)
    return {"first_s": round(first, 3), "warm_s": round(time.perf_counter() - start, 3), "epochs": epochs,
            "device": train._device().type, "val_acc": round(metrics["val_acc"], 4)}


def throughput(cwd: Path, k: int | str, n_gpus: int, model: str, epochs: int, n_train: int, batch: int) -> dict:
    from mlflow.tracking import MlflowClient

    name = f"tput-{model}-k{str(k).replace(':', '')}"
    trials = 16 * max(n_gpus, 1) if k == "auto" else max(2, 2 * k * max(n_gpus, 1))
    (cwd / f"{name}.yaml").write_text(THROUGHPUT.format(name=name, model=model, epochs=epochs, batch=batch,
                                                        n_train=n_train, n_eval=max(n_train // 10, 64),
                                                        seeds=list(range(trials))))
    where = ["--workers-per-gpu", str(k)] if n_gpus else ["--gpus", "none", "--workers", str(k)]
    with Busy() as busy:
        took, out = timed([sys.executable, "-m", "hpo", "run", f"{name}.yaml", *where, "--keep-models", "0",
                           "--no-report", "--no-progress", "--json"], cwd, {} if n_gpus else {"CUDA_VISIBLE_DEVICES": ""})
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    client = MlflowClient(f"sqlite:///{cwd / 'runs' / name / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], "tags.hpo.trial != ''",
                              max_results=1000)
    runs = [r for r in runs if r.info.status == "FINISHED"]
    span = (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000
    images = len(runs) * epochs * n_train
    peak = [r.data.metrics["gpu_peak_mem_mb"] for r in runs if "gpu_peak_mem_mb" in r.data.metrics]
    child_util = [r.data.metrics["gpu_util_mean"] for r in runs if "gpu_util_mean" in r.data.metrics]
    return {"workers_per_device": k, "trials": len(runs), "images": images, "span_s": round(span, 2),
            "wall_s": round(took, 2), "images_per_s_per_device": round(images / span / max(n_gpus, 1), 1),
            "gpu_busy_fraction": busy.busy_fraction(), "gpu_util_mean_pct": busy.mean(),
            "gpu_peak_mem_mb": round(max(peak), 1) if peak else None,
            "child_gpu_util_mean_pct": round(sum(child_util) / len(child_util), 1) if child_util else None,
            "children_with_gpu_util": len(child_util), **_gpu_fields(summary)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="small sizes: CI on CPU")
    ap.add_argument("--out", type=Path, help="the JSON's path (default bench/results/gpu_<device>.json)")
    args = ap.parse_args()
    n_gpus = gpus()
    smoke = args.smoke
    out = args.out or ROOT / "bench" / "results" / f"gpu_{'cuda' if n_gpus else 'cpu'}{'_smoke' if smoke else ''}.json"
    result: dict = {"machine": machine(), "gpus": n_gpus, "smoke": smoke, "gpu_vs_cpu": None, "gpu_auto_vs_cpu": None}

    def save(**rows) -> None:  # after every row: a run cut short still leaves what it measured
        result.update(rows)
        out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for sub in ("cpu", "gpu"):
            (cwd / sub).mkdir()
        if smoke:  # CI: the CPU sweep (its own `hpo run`) goes beside the other rows; their timings are not compared
            from concurrent.futures import ThreadPoolExecutor

            beside = ThreadPoolExecutor(1)
            cpu_sweep = beside.submit(default_sweep, cwd / "cpu", 2, False)
            beside.shutdown(wait=False)
        else:
            sweeps = {"cpu_2_cores": default_sweep(cwd / "cpu", 30, False)}
            save(default_sweep=sweeps)
        if n_gpus:
            if smoke:
                sweeps = {"cpu_2_cores": cpu_sweep.result()}
            sweeps["gpu"] = default_sweep(cwd / "gpu", 30, True)
            save(default_sweep=sweeps, gpu_vs_cpu=round(sweeps["cpu_2_cores"]["wall_s"] / sweeps["gpu"]["wall_s"], 2))
        save(trial_latency=warm_trial(1 if smoke else 27))
        model, epochs, n_train, batch = ("cnn", 1, 256, 64) if smoke or not n_gpus else ("resnet18", 2, 20_000, 256)
        tput = {"model": model, "dataset": "synthetic_cifar10", "epochs": epochs, "train_images": n_train,
                "batch_size": batch, "by_k": []}
        for k in (1, 2) if smoke else (1, 2, 4):
            tput["by_k"].append(throughput(cwd, k, n_gpus, model, epochs, n_train, batch))
            rows = tput["by_k"]
            best = max(rows, key=lambda r: r["images_per_s_per_device"])
            tput.update(best_k=best["workers_per_device"],
                        best_vs_k1=round(best["images_per_s_per_device"] / rows[0]["images_per_s_per_device"], 2))
            save(throughput=tput)
        if smoke and not n_gpus:
            sweeps = {"cpu_2_cores": cpu_sweep.result()}
            save(default_sweep=sweeps)
        if n_gpus:  # `--workers-per-gpu auto`: the same workloads, packed by measurement
            sweeps["gpu_auto"] = default_sweep(cwd / "gpu", 30, True, "auto")
            save(default_sweep=sweeps,
                 gpu_auto_vs_cpu=round(sweeps["cpu_2_cores"]["wall_s"] / sweeps["gpu_auto"]["wall_s"], 2))
            tput["auto"] = throughput(cwd, "auto", n_gpus, model, epochs, n_train, batch)
            save(throughput=tput)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
