"""What keeping the best models costs: the default sweep with `--keep-models 0` vs 3, side by side.

    python bench/bench_models.py [--trials 20] [--repeats 2]

Each run is `hpo run sweep.yaml --trials N --workers 2` in a fresh folder (same seed-free sampler, so the
trials differ between runs; the per-trial figures come from the runs' own tags): wall time, how many
models were logged (kept or later evicted), and `hpo.model_seconds` (logging one model: export, write,
evaluation) for each. Writes bench/results/models_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, timed


def one(keep: int, trials: int) -> dict:
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "sweep.yaml").write_text((ROOT / "sweep.yaml").read_text())
        argv = [sys.executable, "-m", "hpo", "run", "sweep.yaml", "--trials", str(trials), "--workers", "2",
                "--keep-models", str(keep), "--json", "--no-report", *(["--register", "digits"] if keep else [])]
        took, out = timed(argv, cwd, {"CUDA_VISIBLE_DEVICES": ""})
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        client = MlflowClient(f"sqlite:///{cwd / 'runs' / summary['study'] / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name(summary["study"]).experiment_id], max_results=1000)
        seconds = sorted(float(r.data.tags["hpo.model_seconds"]) for r in runs if "hpo.model_seconds" in r.data.tags)
        return {"keep": keep, "wall_s": round(took, 2), "complete": summary["complete"], "pruned": summary["pruned"],
                "models_logged": len(seconds), "model_seconds": [round(s, 3) for s in seconds],
                "model_seconds_total": round(sum(seconds), 2),
                "per_complete_trial_s": round(sum(seconds) / max(summary["complete"], 1), 3),
                "registered": summary.get("registered")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    rows = []
    for i in range(a.repeats):  # interleaved, so a slower minute of the machine hits both sides
        for keep in (0, 3):
            row = one(keep, a.trials)
            rows.append(row)
            print(json.dumps(row), flush=True)
    wall = {k: statistics.median(r["wall_s"] for r in rows if r["keep"] == k) for k in (0, 3)}
    logged = [s for r in rows if r["keep"] == 3 for s in r["model_seconds"]]
    out = {"machine": machine(), "trials": a.trials, "rows": rows, "median_wall_s": wall,
           "model_seconds_median": statistics.median(logged) if logged else None,
           "model_seconds_max": max(logged) if logged else None}
    dest = ROOT / "bench" / "results" / "models_cpu.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("median_wall_s", "model_seconds_median", "model_seconds_max")}))


if __name__ == "__main__":
    main()
