"""The trainer behind a shell launcher: argparse with `--name value` and `--name=value` alike."""

import argparse
import json
import os
import sys

import wandb

parser = argparse.ArgumentParser()
parser.add_argument("--run-name", required=True)
parser.add_argument("--hidden_size", type=int, default=32)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()

run = wandb.init(project="corpus", name=args.run_name, config={k: v for k, v in vars(args).items() if k != "run_name"})
logged = []
for step in range(1, args.steps + 1):
    acc = round(1.0 - 1.0 / (1.0 + args.lr * args.hidden_size * step), 6)
    wandb.log({"val_accuracy": acc, "step_in_epoch": step})
    logged.append(acc)
if os.environ.get("SEEN_DIR"):
    with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
        json.dump({"program": "shell_wrapper", "argv": sys.argv[1:], "pid": os.getpid(),
                   "omp": os.environ.get("OMP_NUM_THREADS"),
                   "params": {k: v for k, v in vars(args).items() if k != "run_name"}, "logged": logged}, f)
run.finish()
