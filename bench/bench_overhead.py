"""Per-trial overhead: hpo vs plain Optuna + optuna-integration's MLflowCallback, side by side.

Both sides run the same trivial trainer, on the same kind of storage (an Optuna
journal file) and log every trial to MLflow (a SQLite store). Per-trial cost is
the slope between a short and a long run, so start-up (imports, worker spawn,
MLflow schema creation) cancels out.

    python bench/bench_overhead.py [--small 20 --large 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import ROOT, machine, timed

SWEEP = textwrap.dedent("""
    name: overhead
    method: random
    metric: {name: score, goal: maximize}
    parameters:
      x: {distribution: uniform, min: 0.0, max: 1.0}
""")


def plain_optuna(n: int, folder: Path) -> float:
    """What a user writes without hpo: study.optimize + MLflowCallback on a journal file."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna_integration.mlflow import MLflowCallback

    sys.path.insert(0, str(Path(__file__).parent))
    from trivial import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.log")))
    study = optuna.create_study(study_name="plain", storage=storage, direction="maximize")
    callback = MLflowCallback(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", metric_name="score")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)

        def report(step, metrics):
            trial.report(metrics["score"], step)

        return train({"x": x}, report)["score"]

    study.optimize(objective, n_trials=1, callbacks=[callback])  # warm-up: MLflow schema, imports
    start = time.perf_counter()
    study.optimize(objective, n_trials=n, callbacks=[callback])
    return time.perf_counter() - start


def hpo_run(n: int, folder: Path) -> float:
    (folder / "sweep.yaml").write_text(SWEEP)
    took, _ = timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--workers", "1", "--trials", str(n),
                     "--trainer", "trivial:train", "--no-progress"], folder,
                    {"PYTHONPATH": str(Path(__file__).parent)})
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--large", type=int, default=120)
    a = ap.parse_args()
    rows = {}
    for name, fn in (("plain Optuna + MLflowCallback", plain_optuna), ("hpo (1 worker)", hpo_run)):
        times = {}
        for n in (a.small, a.large):
            with tempfile.TemporaryDirectory() as tmp:
                times[n] = fn(n, Path(tmp))
        rows[name] = (times[a.large] - times[a.small]) / (a.large - a.small)
        print(f"{name}: {a.small} trials {times[a.small]:.2f} s, {a.large} trials {times[a.large]:.2f} s, "
              f"per trial {1000 * rows[name]:.1f} ms", flush=True)
    plain, ours = rows["plain Optuna + MLflowCallback"], rows["hpo (1 worker)"]
    print(json.dumps({"machine": machine(), "plain_ms_per_trial": round(1000 * plain, 1),
                      "hpo_ms_per_trial": round(1000 * ours, 1), "ratio": round(ours / plain, 2)}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
