"""hpo --backend ray vs plain Ray Tune: same trainable, same ASHA, same trials, same configs.

    python bench/bench_ray.py [--trials 16] [--epochs 9] [--reps 3] [--hidden 512] [--batch-size 16]

Both sides start a local Ray with 2 CPUs, run `hpo.train.train` on digits under
ASHA (grace 1, max_t = epochs, eta 3) with random search seeded alike (so both
draw the same configs), 2 trials at a time with actor reuse, and shut Ray down.
hpo also writes the MLflow parent and children and the Optuna mirror. The sides
alternate, and the medians give the wall-time ratio hpo / plain.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

SWEEP = """
name: bench
method: random
metric: {{name: val_acc, goal: maximize}}
early_terminate: {{type: hyperband, min_iter: 1, max_iter: {epochs}, eta: 3}}
parameters:
  epochs: {{value: {epochs}}}
  hidden: {{value: {hidden}}}
  lr: {{distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-1}}
  batch_size: {{value: {batch}}}
command: [python, -m, hpo.train, "${{args}}"]
"""
SEED = 7


def plain_trainable(config):
    """What a Ray Tune user writes: the trainer, each epoch to tune.report."""
    from ray import tune

    from hpo.train import train

    train(config, lambda step, metrics: tune.report(dict(metrics)))


def plain(trials: int, epochs: int, hidden: int, batch: int, root: Path) -> tuple[float, int]:
    import ray
    from ray import tune
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from ray.tune.search import BasicVariantGenerator

    start = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    space = {"epochs": epochs, "hidden": hidden, "lr": tune.loguniform(1e-5, 1e-1), "batch_size": batch}
    tuner = tune.Tuner(
        tune.with_resources(plain_trainable, {"cpu": 1.0}), param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", num_samples=trials, reuse_actors=True,
            search_alg=BasicVariantGenerator(random_state=SEED, max_concurrent=2),
            scheduler=AsyncHyperBandScheduler(grace_period=1, max_t=epochs, reduction_factor=3,
                                              stop_last_trials=False)),
        run_config=tune.RunConfig(name="plain", storage_path=str(root), verbose=0),
    )
    results = tuner.fit()
    ray.shutdown()
    wall = time.perf_counter() - start
    return wall, sum(r.metrics.get("training_iteration", 0) for r in results)


def with_hpo(trials: int, epochs: int, hidden: int, batch: int, root: Path) -> tuple[float, int]:
    from hpo import api as sweep

    path = root / "sweep.yaml"
    path.write_text(textwrap.dedent(SWEEP.format(epochs=epochs, hidden=hidden, batch=batch)))
    start = time.perf_counter()
    sweep.run(sweep.Settings(path, backend="ray", trials=trials, workers=2, root=root / "runs", progress=False,
                             options={"seed": SEED, "ray_num_cpus": 2}))
    wall = time.perf_counter() - start
    import optuna

    from hpo.storage import open_storage

    study = optuna.load_study(study_name="bench", storage=open_storage(str(root / "runs" / "bench" / "optuna.log")))
    assert len(study.trials) == trials, "hpo mirrored every trial"
    return wall, sum(len(t.intermediate_values) for t in study.trials)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16, help="smaller: longer epochs")
    a = ap.parse_args()
    rows: dict[str, list[tuple[float, int]]] = {"plain": [], "hpo": []}
    for rep in range(a.reps):
        for name in (("plain", "hpo") if rep % 2 == 0 else ("hpo", "plain")):
            with tempfile.TemporaryDirectory() as tmp:
                fn = plain if name == "plain" else with_hpo
                wall, epochs_run = fn(a.trials, a.epochs, a.hidden, a.batch_size, Path(tmp))
            rows[name].append((wall, epochs_run))
            print(f"rep {rep} {name:5s} {wall:7.2f} s  {epochs_run} epochs", flush=True)
    med = {k: statistics.median(w for w, _ in v) for k, v in rows.items()}
    # Async ASHA may stop different trials on each side: also compare seconds per epoch run.
    per_epoch = {k: statistics.median(w / e for w, e in v) for k, v in rows.items()}
    print(json.dumps({"trials": a.trials, "epochs": a.epochs, "hidden": a.hidden, "batch_size": a.batch_size,
                      "reps": a.reps, "plain_s": round(med["plain"], 2),
                      "hpo_s": round(med["hpo"], 2), "ratio": round(med["hpo"] / med["plain"], 3),
                      "ratio_per_epoch": round(per_epoch["hpo"] / per_epoch["plain"], 3),
                      "epochs_run": {k: [e for _, e in v] for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
