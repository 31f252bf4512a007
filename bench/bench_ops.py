"""What one trial costs the shared servers: Optuna storage and MLflow tracking operations, counted.

    python bench/bench_ops.py [--trials 30]

For "scale on paper" (README, More machines): the same sweep (`fault_trainers:slow`, no sleep, so every
figure is hpo's own traffic) runs as 10 trials x 2 epochs, 30 x 2 and 30 x 10 (after a warm-up sweep that
makes both schemas), on
  - a private PostgreSQL (Optuna RDB): transactions and rows touched, from `pg_stat_database`;
  - the journal file: records appended (one JSON line each), by Optuna op code;
  - a real `mlflow server` (PostgreSQL behind it): HTTP requests, from its own access log, by endpoint.
The difference between 10 and 30 trials gives the cost of one trial (the sweep's own start and end cancel
out), between 2 and 10 epochs the cost of one epoch. A third run
with long-sleeping trials gives the background load of an idle worker (heartbeats, the controller's polls)
per second. Ray's GCS is not counted (it exposes no per-request counter). Writes bench/results/ops.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, timed

sys.path.insert(0, str(ROOT / "tests"))
import servers  # noqa: E402 - the tests' own PostgreSQL and MLflow server

SWEEP = """
name: {name}
method: random
metric: {{name: score, goal: maximize}}
parameters:
  x: {{distribution: uniform, min: 0.0, max: 1.0}}
  epochs: {{value: {epochs}}}
  sleep: {{value: {sleep}}}
"""
PG_KEYS = ("xact_commit", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted")


def pg_stats(url: str) -> dict[str, int]:
    import psycopg

    time.sleep(1.5)  # PostgreSQL flushes its per-backend counters about once a second
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as con:
        con.execute("SELECT pg_stat_clear_snapshot()")
        row = con.execute(f"SELECT {', '.join(PG_KEYS)} FROM pg_stat_database WHERE datname = 'optuna'").fetchone()
    return dict(zip(PG_KEYS, row))


def sweep(cwd: Path, name: str, epochs: int, sleep: float, trials: int, storage: str, tracking: str) -> float:
    (cwd / f"{name}.yaml").write_text(SWEEP.format(name=name, epochs=epochs, sleep=sleep))
    took, _ = timed([sys.executable, "-m", "hpo", "run", f"{name}.yaml", "--trials", str(trials), "--workers", "2",
                     "--storage", storage, "--tracking-uri", tracking, "--trainer", "fault_trainers:slow",
                     "--keep-models", "0", "--no-report", "--no-progress"], cwd,
                    {"PYTHONPATH": str(ROOT / "tests"), "CUDA_VISIBLE_DEVICES": ""})
    return took


def endpoint(request: str) -> str:
    method, path = request.split(" ", 1)
    return f"{method} {path.split('?')[0].replace('/api/2.0/mlflow/', '').replace('/ajax-api/2.0/mlflow/', '')}"


def measure(cwd: Path, optuna_db: str, mlflow: servers.MlflowServer, trials: int, epochs: int) -> dict:
    """One sweep on PostgreSQL and the same on a journal file, both logging to the MLflow server."""
    name = f"ops-{trials}x{epochs}"
    before_pg, before_http = pg_stats(optuna_db), len(mlflow.requests())
    wall = sweep(cwd, name, epochs, 0.0, trials, optuna_db, mlflow.url)
    after_pg, http = pg_stats(optuna_db), mlflow.requests()[before_http:]
    journal = cwd / f"{name}.log"
    sweep(cwd, f"{name}-j", epochs, 0.0, trials, str(journal), mlflow.url)
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    return {"trials": trials, "epochs": epochs, "wall_s": round(wall, 1),
            "pg": {k: after_pg[k] - before_pg[k] for k in PG_KEYS},
            "journal_records": len(records), "journal_bytes": journal.stat().st_size,
            "journal_ops": dict(collections.Counter(str(r["op_code"]) for r in records)),
            "http": len(http), "http_by_endpoint": dict(collections.Counter(endpoint(r) for r in http).most_common())}


def slopes(a: dict, b: dict, per: float) -> dict:
    """What grows from run a to run b, per unit (trial or epoch)."""
    return {"pg_xact": round((b["pg"]["xact_commit"] - a["pg"]["xact_commit"]) / per, 2),
            "pg_rows_written": round(sum(b["pg"][k] - a["pg"][k] for k in PG_KEYS[3:]) / per, 2),
            "pg_rows_read": round((b["pg"]["tup_fetched"] - a["pg"]["tup_fetched"]) / per, 1),
            "journal_records": round((b["journal_records"] - a["journal_records"]) / per, 2),
            "journal_bytes": round((b["journal_bytes"] - a["journal_bytes"]) / per),
            "http": round((b["http"] - a["http"]) / per, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30, help="the larger sweep; the smaller has a third of it")
    args = ap.parse_args()
    pg = servers.start_postgres()
    try:
        optuna_db = servers.create_database(pg.url, "optuna")
        mlflow = servers.start_mlflow_server(pg.url)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cwd = Path(tmp)
                sweep(cwd, "warm-up", 1, 0.0, 1, optuna_db, mlflow.url)  # both schemas made: not counted
                small, n = args.trials // 3, args.trials
                runs = [measure(cwd, optuna_db, mlflow, small, 2), measure(cwd, optuna_db, mlflow, n, 2),
                        measure(cwd, optuna_db, mlflow, n, 10)]
                per_trial = slopes(runs[0], runs[1], n - small)
                per_epoch = slopes(runs[1], runs[2], n * 8)
                # Idle load: 2 workers, each in a trial whose epochs sleep 10 s: what the servers see per second.
                before_pg, before_http = pg_stats(optuna_db), len(mlflow.requests())
                idle_wall = sweep(cwd, "ops-idle", 2, 10.0, 2, optuna_db, mlflow.url)
                after_pg, http = pg_stats(optuna_db), mlflow.requests()[before_http:]
                idle = {"wall_s": round(idle_wall, 1),
                        "pg_xact_per_s": round((after_pg["xact_commit"] - before_pg["xact_commit"]) / idle_wall, 2),
                        "pg_rows_read_per_s": round((after_pg["tup_fetched"] - before_pg["tup_fetched"]) / idle_wall),
                        "http_per_s": round(len(http) / idle_wall, 2)}
        finally:
            mlflow.stop()
    finally:
        pg.shutdown()
    result = {"machine": machine(), "runs": runs, "per_trial_2_epochs": per_trial, "per_epoch": per_epoch,
              "idle_2_workers": idle}
    out = ROOT / "bench" / "results" / "ops.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
