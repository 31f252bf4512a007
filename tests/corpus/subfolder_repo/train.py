"""A repository's top-level training script, its sweep file kept in `sweeps/`: `wandb agent` is started
from the repository root, so the script opens its data by a path relative to the root and imports the
repository's own package. It takes no arguments: the command has no `${args}`, every value comes from
`wandb.config`."""

import csv
import json
import os
import sys

import wandb

from lib.fit import rmse

run = wandb.init(project="corpus", config={"slope": 1.0, "intercept": 0.0, "passes": 1})
config = run.config
with open(os.path.join("data", "points.csv"), newline="") as f:  # relative to where it runs
    points = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
logged = []
for step in range(1, config.passes + 1):
    error = round(rmse(points, config.slope * step / config.passes, config.intercept), 6)
    run.log({"val_rmse": error})
    logged.append(error)
if os.environ.get("SEEN_DIR"):
    with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
        json.dump({"program": "subfolder_repo", "argv": sys.argv[1:], "cwd": os.getcwd(),
                   "params": {k: config[k] for k in ("slope", "intercept", "passes")}, "logged": logged}, f)
run.finish()
