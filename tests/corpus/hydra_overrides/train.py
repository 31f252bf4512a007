"""A Hydra-style script: its settings are `key=value` overrides on a nested config of defaults (what
`${args_no_hyphens}` passes), parsed here by hand so nothing depends on hydra/omegaconf. The config
goes to `wandb.init(config=...)` as a plain dict, as W&B's Hydra guide tells users to do."""

import copy
import json
import math
import os
import sys

import wandb

DEFAULTS = {
    "model": {"name": "mlp", "depth": 2, "width": 64, "dropout": 0.0},
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "trainer": {"max_epochs": 5, "seed": 0},
}


def parse_value(text):
    """What Hydra's grammar makes of a plain value: null, bools, ints, floats, else the string."""
    lowered = text.lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'\"")


def apply_overrides(cfg, overrides):
    """`a.b=1` sets a key that exists; `+a.b=1` adds one; `~a.b` deletes one (Hydra's three forms)."""
    applied = {}
    for item in overrides:
        if item.startswith("~"):
            *path, last = item[1:].split(".")
            node = cfg
            for part in path:
                node = node[part]
            node.pop(last, None)
            continue
        add = item.startswith("+")
        key, sep, raw = item.lstrip("+").partition("=")
        if not sep:
            raise SystemExit(f"override {item!r}: expected key=value")
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {}) if add else node[part]
        if last not in node and not add:
            raise SystemExit(f"Could not override '{key}'. To append to your config use +{key}={raw}")
        node[last] = applied[key] = parse_value(raw)
    return applied


def main(argv):
    cfg = copy.deepcopy(DEFAULTS)
    applied = apply_overrides(cfg, argv)
    run = wandb.init(project="corpus", config=cfg)
    m, o = cfg["model"], cfg["optimizer"]
    capacity = m["depth"] * m["width"] / 128.0
    logged = []
    for epoch in range(1, cfg["trainer"]["max_epochs"] + 1):
        val_loss = round(math.exp(-o["lr"] * (1.0 + o["momentum"]) * capacity * epoch), 6)
        run.log({"trainer/epoch": epoch, "val/loss": val_loss})
        logged.append(val_loss)
    if os.environ.get("SEEN_DIR"):
        with open(os.path.join(os.environ["SEEN_DIR"], os.environ["MLFLOW_RUN_ID"] + ".json"), "w") as f:
            json.dump({"program": "hydra_overrides", "argv": argv, "params": applied, "cfg": cfg,
                       "logged": logged}, f)
    run.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
