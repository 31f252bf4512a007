"""A script that logs human-readable metric names (`Val Acc`, `Train Loss`) while its sweep file asks
for `val acc`: W&B's keys are case-sensitive, so the sweep never sees its metric. A common slip when a
sweep file is written by hand after the training code."""

import argparse
import json
import os
import sys

import wandb

parser = argparse.ArgumentParser()
parser.add_argument("--dropout", type=float, default=0.1)
parser.add_argument("--epochs", type=int, default=2)
args = parser.parse_args()

run = wandb.init(project="corpus", config=args)
logged = []
for epoch in range(1, args.epochs + 1):
    acc = round(0.9 - args.dropout / epoch, 6)
    wandb.log({"Epoch": epoch, "Train Loss": 1.0 - acc, "Val Acc": acc})
    logged.append(acc)
if os.environ.get("SEEN_DIR"):
    with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
        json.dump({"program": "misnamed_metric", "argv": sys.argv[1:], "params": vars(args), "logged": logged}, f)
run.finish()
