"""hpo vs the loop a user writes by hand: the default sweep, start-up and shut-down, `report()`,
pruning, and a 10,000-trial study. Every side runs as its own process, alternating, medians.

    python bench/bench_speed.py [--only default,report,pruning,scale] [--reps 3] [--trials 40]
                                [--scale-trials 10000]

- default: the default sweep (sweep.yaml, digits, TPE, W&B hyperband) for --trials trials:
  a plain Optuna loop in one process (same space, same pruner, in-memory study), the same loop
  logging each trial as a nested MLflow run with per-epoch metrics (SQLite), and `hpo run`
  with 1 and 2 workers. From hpo's own study: command start -> first trial started, and
  last trial finished -> command exit.
- report: the cost of one `report()` in a worker: a trainer that does nothing but report
  (bench/trivial.py:reports), its own time (the `hpo.trainer_seconds` hpo records) / reports.
- pruning: epochs trained with hpo's Optuna pruners (sha, hyperband) / without, and the best
  val_acc, TPE seeded alike, 5 seeds, in one process.
- scale: a trivial trainer for --scale-trials trials on 2 workers: cycle time of the last 1,000
  trials / the first 1,000, the controller's CPU while trials run, `hpo status` time, and bytes
  written to the disk (the block device's counter) / bytes of the final files.

Raw output: bench/results/speed_cpu.json (one JSON object on stdout as well).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from _common import ROOT, disk_sectors_written, machine

BENCH = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]), "PYTHONUNBUFFERED": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)


# -- the plain loop (run in a child process: `bench_speed.py _plain`) -------------------------------
def plain_loop(sweep_file: str, trials: int, mlflow_uri: str | None, seed: int, pruner: str) -> dict:
    """What a user writes without hpo: study.optimize over the trainer, pruning at each epoch."""
    import optuna

    from hpo import spec as specmod
    from hpo import distributions as space
    from hpo.spec import hyperband
    from hpo.train import train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = specmod.load(Path(sweep_file))
    dists, last = space.distributions(spec), hyperband.last_step(spec)
    pruning = optuna.pruners.NopPruner() if pruner == "none" else space.pruner(spec, pruner)
    study = optuna.create_study(direction=spec.direction, pruner=pruning,
                                sampler=optuna.samplers.TPESampler(seed=seed))
    if mlflow_uri:
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri)
        mlflow.set_experiment("plain")
        mlflow.start_run(run_name="sweep")

    def objective(trial: optuna.Trial) -> float:
        config = specmod.unflatten({n: space.suggest(trial, n, d) for n, d in dists.items()})
        ctx = None
        if mlflow_uri:
            ctx = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True)
            mlflow.log_params(config)
        values: list[float] = []

        def report(step, metrics):
            if ctx is not None:
                mlflow.log_metrics(dict(metrics), step=step)
            values.append(metrics[spec.metric])
            trial.report(metrics[spec.metric], step)
            if (last is None or step < last) and trial.should_prune():
                raise optuna.TrialPruned()

        try:
            train(config, report)
        finally:
            if ctx is not None:
                mlflow.end_run()
        return values[-1]

    study.optimize(objective, n_trials=trials)
    if mlflow_uri:
        mlflow.end_run()
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    return {"epochs": sum(len(t.intermediate_values) for t in study.trials),
            "best": max(t.value for t in done) if done else None, "pruned": len(study.trials) - len(done)}


# -- helpers ------------------------------------------------------------------------------------------
def _study(folder: Path, name: str):
    import optuna

    from hpo.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(folder / "runs" / name / "optuna.log")))


def _hpo(folder: Path, args: list[str], sample_cpu: bool = False) -> dict:
    """`hpo run` in `folder`; wall time, and (optionally) the controller's CPU seconds, sampled."""
    start_wall, start = time.time(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", *args, "--no-progress"], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu: list[tuple[float, float]] = []  # (wall, controller CPU seconds)

    def sample() -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while proc.poll() is None:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))
            except (OSError, IndexError):
                pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    if sample_cpu:
        sampler.start()
    out, err = proc.communicate()
    wall, end_wall = time.perf_counter() - start, time.time()
    if proc.returncode != 0:
        sys.exit(f"hpo run {args} failed:\n{err[-3000:]}")
    return {"wall": wall, "start": start_wall, "end": end_wall, "result": json.loads(out.strip().splitlines()[-1]),
            "cpu": cpu}


def _plain(folder: Path, trials: int, mlflow: bool, seed: int = 0, pruner: str = "sha") -> dict:
    shutil.copy(ROOT / "sweep.yaml", folder / "sweep.yaml")
    argv = [sys.executable, str(BENCH / "bench_speed.py"), "_plain", str(folder / "sweep.yaml"), str(trials),
            f"sqlite:///{folder / 'mlflow.db'}" if mlflow else "-", str(seed), pruner]
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=folder, env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"plain loop failed:\n{out.stderr[-3000:]}")
    return {"wall": time.perf_counter() - start, **json.loads(out.stdout.strip().splitlines()[-1])}


def med(xs: list[float], nd: int = 2) -> float:
    return round(statistics.median(xs), nd)


# -- sections -------------------------------------------------------------------------------------------
def default(reps: int, trials: int) -> dict:
    sides = ["plain", "plain+mlflow", "hpo w1", "hpo w2"]
    walls: dict[str, list[float]] = {s: [] for s in sides}
    first, tail, best = [], [], {s: [] for s in sides}
    for rep in range(reps):
        for side in sides:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                if side.startswith("plain"):
                    r = _plain(folder, trials, side.endswith("mlflow"))
                    walls[side].append(r["wall"])
                    best[side].append(r["best"])
                else:
                    shutil.copy(ROOT / "sweep.yaml", folder / "sweep.yaml")
                    r = _hpo(folder, ["sweep.yaml", "--trials", str(trials), "--workers", side[-1]])
                    walls[side].append(r["wall"])
                    best[side].append(r["result"]["best_value"])
                    ts = _study(folder, "digits-mlp").trials
                    first.append(min(t.datetime_start.timestamp() for t in ts) - r["start"])
                    tail.append(r["end"] - max(t.datetime_complete.timestamp() for t in ts))
            print(f"default rep {rep} {side}: {walls[side][-1]:.1f} s", file=sys.stderr, flush=True)
    m = {s: med(v, 1) for s, v in walls.items()}
    return {"trials": trials, "reps": reps, "wall_s": m, "walls": walls, "best": best,
            "hpo_w1_over_plain_mlflow": round(m["hpo w1"] / m["plain+mlflow"], 2),
            "hpo_w2_over_plain": round(m["hpo w2"] / m["plain"], 2),
            "start_to_first_trial_s": med(first), "last_trial_to_exit_s": med(tail),
            "start_to_first_trial_all": [round(x, 2) for x in first], "last_trial_to_exit_all": [round(x, 2) for x in tail]}


def report_cost(reps: int) -> dict:
    import trivial

    per_call = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "sweep.yaml").write_text(textwrap.dedent("""
                name: reports
                method: random
                metric: {name: score, goal: maximize}
                early_terminate: {type: hyperband, min_iter: 3, eta: 3}
                parameters:
                  x: {distribution: uniform, min: 0.0, max: 1.0}
            """))
            _hpo(folder, ["sweep.yaml", "--trials", "6", "--workers", "1", "--trainer", "trivial:reports"])
            ts = [t for t in _study(folder, "reports").trials if t.state.name == "COMPLETE"]
            per_call += [t.user_attrs["hpo.trainer_seconds"] / trivial.REPORTS * 1000 for t in ts[1:]]
    return {"report_ms": med(per_call, 3), "all_ms": [round(x, 3) for x in per_call], "reports_per_trial": trivial.REPORTS}


def pruning(seeds: int, trials: int) -> dict:
    rows = {}
    for kind in ("none", "sha", "hyperband"):
        rows[kind] = []
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as tmp:
                r = _plain(Path(tmp), trials, False, seed, kind)
            rows[kind].append({"seed": seed, "epochs": r["epochs"], "best": round(r["best"], 4)})
            print(f"pruning {kind} seed {seed}: {r['epochs']} epochs, best {r['best']:.4f}", file=sys.stderr, flush=True)
    out = {"trials": trials, "seeds": seeds, "runs": rows}
    for kind in ("sha", "hyperband"):
        ratios = [a["epochs"] / b["epochs"] for a, b in zip(rows[kind], rows["none"])]
        out[f"{kind}_epochs_ratio"] = med(ratios)
        out[f"{kind}_best_minus_none_pp"] = med([100 * (a["best"] - b["best"]) for a, b in zip(rows[kind], rows["none"])])
    return out


def scale(trials: int) -> dict:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # on the same disk as a user's runs/
        folder = Path(tmp)
        (folder / "sweep.yaml").write_text(textwrap.dedent("""
            name: scale
            method: random
            metric: {name: score, goal: maximize}
            parameters:
              x: {distribution: uniform, min: 0.0, max: 1.0}
        """))
        before = disk_sectors_written()
        r = _hpo(folder, ["sweep.yaml", "--trials", str(trials), "--workers", "2", "--trainer", "trivial:train"],
                 sample_cpu=True)
        written = disk_sectors_written() - before
        files = sum(p.stat().st_size for p in (folder / "runs").rglob("*") if p.is_file())
        ts = sorted(_study(folder, "scale").trials, key=lambda t: t.datetime_complete)
        ends = [t.datetime_complete.timestamp() for t in ts]
        k = min(1000, len(ends) // 3)
        first, last = (ends[k] - ends[0]) / k, (ends[-1] - ends[-1 - k]) / k
        def cpu_between(lo: float, hi: float) -> float | None:
            during = [(w, c) for w, c in r["cpu"] if lo <= w <= hi]
            return (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0]) if len(during) > 1 else None

        cpu = cpu_between(min(t.datetime_start.timestamp() for t in ts), ends[-1])
        steady = cpu_between(ends[k], ends[-1])  # after the first k trials: the queue is enqueued by then
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpo", "status", "sweep.yaml"], cwd=folder, env=ENV, check=True,
                       capture_output=True)
        status_s = time.perf_counter() - start
    return {"trials": trials, "wall_s": round(r["wall"], 1), "cycle_first_ms": round(1000 * first, 2),
            "cycle_last_ms": round(1000 * last, 2), "cycle_ratio": round(last / first, 2),
            "controller_cpu_fraction": None if cpu is None else round(cpu, 3),
            "controller_cpu_fraction_steady": None if steady is None else round(steady, 3),
            "last_trial_to_exit_s": round(r["end"] - ends[-1], 2), "status_s": round(status_s, 2),
            "disk_bytes_written": written, "final_file_bytes": files, "write_amplification": round(written / files, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_plain":
        sweep, trials, uri, seed, pruner = sys.argv[2:7]
        print(json.dumps(plain_loop(sweep, int(trials), None if uri == "-" else uri, int(seed), pruner)))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="default,report,pruning,scale")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scale-trials", type=int, default=10000)
    a = ap.parse_args()
    out: dict = {"machine": machine()}
    sections = a.only.split(",")
    if "default" in sections:
        out["default"] = default(a.reps, a.trials)
    if "report" in sections:
        out["report"] = report_cost(a.reps)
    if "pruning" in sections:
        out["pruning"] = pruning(a.seeds, a.trials)
    if "scale" in sections:
        out["scale"] = scale(a.scale_trials)
    print(json.dumps(out))
    results = BENCH / "results" / "speed_cpu.json"
    old = json.loads(results.read_text()) if results.exists() else {}
    results.write_text(json.dumps({**old, **out}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
