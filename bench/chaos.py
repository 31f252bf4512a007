"""Chaos: a sweep while a random worker is SIGKILLed every few seconds; then count what was lost.

    python bench/chaos.py [--trials 60 --workers 3 --every 2.0]

Prints one JSON line: kills survived, trials finished vs budget, Optuna trials
and MLflow runs left RUNNING (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SWEEP = textwrap.dedent("""
    name: chaos
    method: random
    metric: {name: score, goal: maximize}
    parameters:
      x: {distribution: uniform, min: 0.0, max: 1.0}
      epochs: {value: 3}
      sleep: {value: 0.25}
""")


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`, read from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def busy_workers(folder: Path) -> list[int]:
    """Worker pids that hold a RUNNING trial right now (so each kill lands mid-trial)."""
    import optuna
    from optuna.trial import TrialState

    sys.path.insert(0, str(ROOT))
    from hpo.storage import open_storage

    path = folder / "runs" / "chaos" / "optuna.log"
    if not path.exists():
        return []
    try:
        study = optuna.load_study(study_name="chaos", storage=open_storage(str(path)))
    except KeyError:
        return []
    return [t.user_attrs["hpo.pid"] for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if "hpo.pid" in t.user_attrs]


def chaos(folder: Path, trials: int, workers: int, every: float, seed: int = 0) -> dict:
    """Run the sweep, SIGKILL a random busy worker every `every` seconds, then audit the stores."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (folder / "sweep.yaml").write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--workers", str(workers),
                             "--trials", str(trials), "--trainer", "fault_trainers:slow", "--no-progress"],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng, kills, start = random.Random(seed), 0, time.monotonic()
    time.sleep(every)
    while proc.poll() is None:
        pids = sorted(set(busy_workers(folder)) & set(children(proc.pid)))
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(every)
    out, err = proc.communicate()
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"hpo run failed ({proc.returncode}):\n{err[-3000:]}")
    return {"kills": kills, "seconds": round(took, 1), **audit(folder / "runs" / "chaos", trials)}


def audit(sweep_dir: Path, budget: int) -> dict:
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    sys.path.insert(0, str(ROOT))
    from hpo.storage import count, open_storage

    trials = optuna.load_study(study_name="chaos", storage=open_storage(str(sweep_dir / "optuna.log"))).get_trials()
    c = count(trials)
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("chaos")
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    return {"budget": budget, "finished": c.finished, "complete": c.complete, "killed_trials": c.retried,
            "optuna_running": sum(t.state == TrialState.RUNNING for t in trials),
            "optuna_waiting": c.waiting,
            "mlflow_runs": len(runs), "mlflow_running": sum(r.info.status == "RUNNING" for r in runs),
            "mlflow_failed_children": sum(r.info.status == "FAILED" for r in runs),
            "mlflow_finished_children": sum(r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags
                                            for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--every", type=float, default=3.0)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from _common import machine

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps({"machine": machine(), **chaos(Path(tmp), a.trials, a.workers, a.every)}))


if __name__ == "__main__":
    main()
