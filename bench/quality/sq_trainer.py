"""The surrogate as an ordinary hpo trainer: `--trainer sq_trainer:train` (with bench/quality on PYTHONPATH).

Each epoch reports the surrogate's val_accuracy (and its predicted seconds) through hpo's `report`, so what
runs is the path users run: real workers, Optuna/Ray/W&B engines, real storage, MLflow child runs. It never
sleeps the predicted time; `sq_sleep` (a fraction, 0 by default) sleeps that fraction of each epoch's
predicted seconds where parallel trials' finishing order matters (several workers, asynchronous pruning).

Every trial also appends one JSON line to `<sq_log>/<pid>.jsonl`: its params, the wall-clock time it started,
and its per-epoch (val_accuracy, seconds), from which the benchmark rebuilds the epoch and simulated-time
axes (bench/search_quality.py: hpo_observations). Once `sq_budget` epochs
(and `sq_seconds` simulated worker-seconds) are logged in the folder, a trial reports one epoch and ends: what comes after the budget is never scored, so it is not worth hpo's time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from surrogates import task as make_task  # noqa: E402

KEYS = ("sq_task", "sq_log", "sq_sleep", "sq_budget", "sq_seconds", "yahpo_data", "epochs")


def _logged(folder: Path) -> tuple[int, float]:
    """(epochs, simulated worker-seconds) the trials in the folder have used so far."""
    n, secs = 0, 0.0
    for f in folder.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
                n, secs = n + len(rec["acc"]), secs + sum(rec["dt"])
            except (ValueError, KeyError):
                pass
    return n, secs


def train(config: dict, report) -> dict:
    started = time.time()
    t = make_task(config["sq_task"], config.get("yahpo_data") or None)
    params = {k: v for k, v in config.items() if k not in KEYS}
    folder = Path(config["sq_log"])
    folder.mkdir(parents=True, exist_ok=True)
    epochs = int(config.get("epochs", t.max_epochs))
    if config.get("sq_budget"):
        n, secs = _logged(folder)
        if n >= int(config["sq_budget"]) and secs >= float(config.get("sq_seconds") or 0):
            epochs = 1  # past both budgets: not scored
    acc, dt = t.curve(params)
    frac = float(config.get("sq_sleep") or 0.0)
    done_acc: list[float] = []
    record = {"start": started, "params": params, "acc": done_acc, "dt": [float(x) for x in dt[:epochs]]}
    try:
        for e in range(1, epochs + 1):
            if frac:
                time.sleep(frac * float(dt[e - 1]))
            done_acc.append(float(acc[e - 1]))
            report(e, {"val_accuracy": float(acc[e - 1]), "sim_seconds": float(dt[e - 1])})
    finally:  # a pruned trial raises out of report: its epochs so far still count
        record["dt"] = record["dt"][:len(done_acc)]
        record["end"] = time.time()
        with open(folder / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    return {"val_accuracy": float(acc[epochs - 1])}
