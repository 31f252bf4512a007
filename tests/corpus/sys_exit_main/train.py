#!/usr/bin/env python
"""A script laid out as a console entry point: `main()` returns an exit status and the module ends in
`sys.exit(main())`. The run is a context manager (`with wandb.init() as run`), its values come only
from `run.config` (the command passes no arguments), and it logs through `run.log`."""

import json
import os
import sys

import wandb


def evaluate(width, weight_decay, epoch):
    # a closed form stands in for a validation pass
    return round(1.0 / (1.0 + width * epoch / 100.0) + weight_decay, 6)


def main() -> int:
    with wandb.init(project="corpus", config={"width": 8, "weight_decay": 0.0, "epochs": 2}) as run:
        cfg = run.config
        logged = []
        for epoch in range(1, cfg.epochs + 1):
            loss = evaluate(cfg.width, cfg.weight_decay, epoch)
            run.log({"loss": loss}, step=epoch)
            logged.append(loss)
        if os.environ.get("SEEN_DIR"):
            with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
                json.dump({"program": "sys_exit_main", "argv": sys.argv[1:],
                           "params": {k: cfg[k] for k in ("width", "weight_decay", "epochs")}, "logged": logged}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
