"""Multi-objective search: the hypervolume of the Pareto front, multi-objective TPE vs random, same budget.

    python bench/bench_multi.py [--trials 40] [--repeats 3]

The built-in trainer on digits with two objectives, `val_acc` (maximise) and `n_params` (minimise), as a
`metrics:` sweep: `method: custom` (W&B's form; hpo runs Optuna's multi-objective TPE) against
`method: random`, each `--repeats` times, interleaved, 2 CPU workers. Hypervolume (Optuna's own
`compute_hypervolume`) of (1 - val_acc, n_params / largest) against the reference point (1, 1): higher is
better. Writes bench/results/multi_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, machine, timed

SWEEP = {
    "metrics": [{"name": "val_acc", "goal": "maximize"}, {"name": "n_params", "goal": "minimize"}],
    "parameters": {
        "epochs": {"value": 6},
        "hidden": {"values": [4, 8, 16, 32, 64, 128, 256]},
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "batch_size": {"values": [32, 64, 128]},
    },
    "command": ["python", "-m", "hpo.train", "${args}"],
}
LARGEST = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # the MLP's parameters at hidden = 256


def hypervolume(study) -> float:
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    points = np.array([[1.0 - t.values[0], t.values[1] / LARGEST] for t in study.best_trials])
    return float(compute_hypervolume(points, np.array([1.0, 1.0]))) if len(points) else 0.0


def one(method: str, trials: int, i: int) -> dict:
    import optuna

    from hpo.storage import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        cwd, name = Path(tmp), f"mo-{method}-{i}"
        (cwd / "sweep.yaml").write_text(yaml.safe_dump({"name": name, "method": method, **SWEEP}, sort_keys=False))
        took, _ = timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--trials", str(trials), "--workers", "2",
                         "--keep-models", "0", "--no-report", "--json"], cwd, {"CUDA_VISIBLE_DEVICES": ""})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=name, storage=open_storage(str(cwd / "runs" / name / "optuna.log")))
        return {"method": method, "repeat": i, "wall_s": round(took, 1), "hypervolume": round(hypervolume(study), 4),
                "front": len(study.best_trials)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rows = []
    for i in range(a.repeats):
        for method in ("custom", "random"):
            rows.append(one(method, a.trials, i))
            print(json.dumps(rows[-1]), flush=True)
    summary = {m: {"median_hypervolume": statistics.median(r["hypervolume"] for r in rows if r["method"] == m),
                   "hypervolumes": [r["hypervolume"] for r in rows if r["method"] == m]} for m in ("custom", "random")}
    out = {"machine": machine(), "trials": a.trials, "rows": rows, "summary": summary}
    (ROOT / "bench" / "results" / "multi_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
