"""Per-trial overhead: hpo vs plain Optuna + optuna-integration's MLflowCallback, side by side.

Both sides run the same trivial trainer, on the same kind of storage (an Optuna
journal file) and log every trial to MLflow (a SQLite store). Per-trial cost is
the steady-state cycle read from the study's own trial timestamps (first trial
started to last trial finished, after a warm-up), so start-up (imports, worker
spawn, MLflow schema creation) is left out on both sides.

    python bench/bench_overhead.py [--trials 200 --reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import ROOT, machine, timed

SWEEP = textwrap.dedent("""
    name: overhead
    method: random
    metric: {name: score, goal: maximize}
    parameters:
      x: {distribution: uniform, min: 0.0, max: 1.0}
""")


WARMUP = 10  # trials left out of the cycle time: imports, first MLflow writes, caches


def cycle_seconds(journal: Path, study: str) -> float:
    """Mean seconds per trial from the trials' timestamps, after the warm-up trials."""
    import optuna

    sys.path.insert(0, str(ROOT))
    from hpo.storage import open_storage

    trials = sorted(optuna.load_study(study_name=study, storage=open_storage(str(journal))).get_trials(),
                    key=lambda t: t.number)[WARMUP:]
    span = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds()
    return span / len(trials)


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

    study.optimize(objective, n_trials=n, callbacks=[callback])
    return cycle_seconds(folder / "optuna.log", "plain")


def hpo_run(n: int, folder: Path) -> float:
    (folder / "sweep.yaml").write_text(SWEEP)
    timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--workers", "1", "--trials", str(n),
           "--trainer", "trivial:train", "--no-progress"], folder, {"PYTHONPATH": str(Path(__file__).parent)})
    return cycle_seconds(folder / "runs" / "overhead" / "optuna.log", "overhead")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    sides = {"plain Optuna + MLflowCallback": plain_optuna, "hpo (1 worker)": hpo_run}
    ms: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(a.reps):  # alternate the sides so drift on a shared machine hits both
        for name, fn in sides.items():
            with tempfile.TemporaryDirectory() as tmp:
                ms[name].append(1000 * fn(a.trials, Path(tmp)))
            print(f"rep {rep} {name}: {ms[name][-1]:.1f} ms per trial", flush=True)
    plain, ours = (statistics.median(v) for v in ms.values())
    print(json.dumps({"machine": machine(), "trials": a.trials, "reps": a.reps,
                      "plain_ms_per_trial": round(plain, 1), "hpo_ms_per_trial": round(ours, 1),
                      "ratio": round(ours / plain, 2), "runs_ms": {k: [round(x, 1) for x in v] for k, v in ms.items()}}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
