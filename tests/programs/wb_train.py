"""A W&B user's training script, as `wandb agent` runs it: wandb.config, wandb.log, its arguments on argv.

It checks what it was given itself and exits 1 (stderr says why) when argv, wandb.config
and the ${args_json_file} disagree; it writes what it saw to $SEEN_DIR/trial-$HPO_TRIAL.json.
"""

import json
import os
import sys
import time

import wandb

flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
run = wandb.init(config={"default_only": 7})
config = dict(wandb.config)
problems = []
for key, value in config.items():
    if key != "default_only" and flags.get(key) != str(value):
        problems.append(f"argv --{key}={flags.get(key)} but wandb.config {value!r}")
with open(flags["json"]) as f:
    from_file = json.load(f)
if {k: v for k, v in config.items() if k != "default_only"} != from_file:
    problems.append(f"args_json_file {from_file} != wandb.config {config}")
if problems:
    print("; ".join(problems), file=sys.stderr)
    sys.exit(1)
with open(os.path.join(os.environ["SEEN_DIR"], f"trial-{os.environ['HPO_TRIAL']}.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "config": config, "pid": os.getpid(), "mode": os.environ.get("WANDB_MODE")}, f)
acc = 0.0
for epoch in range(1, config["epochs"] + 1):
    acc += config["lr"] / 100.0 * (2.0 if config["opt"]["name"] == "adam" else 1.0)
    wandb.log({"val/acc": acc, "train.loss": 1.0 - acc})
    time.sleep(float(os.environ.get("EPOCH_S", "0")))
run.finish()
