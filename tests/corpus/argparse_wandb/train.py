"""The commonest W&B script: argparse flags, `wandb.init(config=args)`, then `wandb.config` and one
`wandb.log` per epoch. `wandb agent` passes the sweep's values as `--name=value` (`${args}`)."""

import argparse
import json
import os
import sys

import numpy as np
import wandb


def parse_args():
    parser = argparse.ArgumentParser(description="toy classifier")
    parser.add_argument("--lr", type=float, default=0.001, help="learning rate")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    return parser.parse_args()


def main():
    args = parse_args()
    run = wandb.init(project="corpus", config=args)
    config = wandb.config
    speed = config.lr * (2.0 if config.optimizer == "adam" else 1.0) * 32 / config.batch_size
    logged = []
    for epoch in range(1, config.epochs + 1):
        losses = np.full(4, 1.0) / (1.0 + speed * epoch)  # a "batch" loss per step, all alike
        val_acc = round(1.0 - float(losses.mean()), 6)
        wandb.log({"epoch": epoch, "train/loss": float(losses.mean()), "val_acc": val_acc})
        logged.append(val_acc)
    seen = os.environ.get("SEEN_DIR")
    if seen:
        with open(os.path.join(seen, os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
            json.dump({"program": "argparse_wandb", "argv": sys.argv[1:], "params": vars(args),
                       "config": dict(config), "logged": logged}, f)
    run.finish()


if __name__ == "__main__":
    main()
