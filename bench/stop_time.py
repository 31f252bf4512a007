"""Where Ctrl-C's stop time goes: SIGINT to `hpo run` with two trials in flight, on each engine.

    python bench/stop_time.py [ENGINE ...]      # default: optuna wandb ray

Prints one JSON line per engine: seconds from SIGINT until every worker process is
gone, and until the controller has exited (its parent run closed KILLED).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]

from _common import machine  # noqa: E402

SWEEP = """
name: stop
method: random
metric: {name: score, goal: maximize}
parameters:
  x: {distribution: uniform, min: 0, max: 1}
  epochs: {value: 200}
  sleep: {value: 0.1}
"""
FLAGS = {"optuna": [], "wandb": ["--backend", "wandb", "--offline"], "ray": ["--backend", "ray"]}


def tree(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [p for k in kids for p in (int(k), *tree(int(k)))]


def running_children(folder: Path) -> int:
    import sqlite3

    db = folder / "runs" / "stop" / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from runs where status='RUNNING' and name like 'trial-%'").fetchone()[0]
    except sqlite3.Error:
        return 0


def once(engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "s.yaml").write_text(SWEEP)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "tests"),
               "HPO_RAY_NUM_CPUS": "2", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "s.yaml", "--workers", "2", "--trials", "4",
                                 "--trainer", "fault_trainers:slow", "--no-progress", *FLAGS[engine]],
                                cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and running_children(folder) < 2:
            time.sleep(0.2)
        time.sleep(1.0)
        workers = set(tree(proc.pid))
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        workers_gone = None
        while proc.poll() is None:
            if workers_gone is None and not any(os.path.exists(f"/proc/{p}") and
                                                "zombie" not in Path(f"/proc/{p}/status").read_text().lower()
                                                for p in workers if os.path.exists(f"/proc/{p}/status")):
                workers_gone = time.monotonic() - start
            time.sleep(0.02)
        total = time.monotonic() - start
        return {"engine": engine, "exit": proc.returncode, "workers_gone_s": round(workers_gone or total, 2),
                "controller_exit_s": round(total, 2)}


def main() -> None:
    for engine in sys.argv[1:] or ["optuna", "wandb", "ray"]:
        print(json.dumps({**once(engine), "machine": machine()}), flush=True)


if __name__ == "__main__":
    main()
