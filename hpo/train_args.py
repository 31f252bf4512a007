"""The built-in trainer's settings and `python -m hpo.train`'s flags; no torch here, so `--help` and a bad flag
answer at once."""

from __future__ import annotations

import argparse
import re
from typing import Any

# Defaults that make `python -m hpo.train` a sensible run on a laptop CPU.
DEFAULTS: dict[str, Any] = {
    "dataset": "digits",  # digits | mnist | fashion_mnist | cifar10 | synthetic_cifar10
    "data_dir": "data",  # where torchvision sets are downloaded
    "model": "mlp",  # mlp | cnn | resnet18
    "hidden": 128,
    "dropout": 0.1,
    "optimizer": "adam",  # sgd | adam | adamw
    "lr": 3e-3,
    "momentum": 0.9,  # sgd only
    "weight_decay": 1e-4,
    "batch_size": 64,
    "epochs": 10,
    "seed": 0,
    "amp": True,  # mixed precision: CUDA only, and only for the convolutional models (models.step_plan)
    "cuda_graphs": True,  # CUDA: replay each full batch's step from one captured graph (hpo.train_step)
    "max_train_samples": 0,  # 0: the whole training split; N: its first N rows (quick runs, CPU benchmarks)
    "max_eval_samples": 0,  # the same for the validation split
}


CHOICES = {"dataset": ("digits", "mnist", "fashion_mnist", "cifar10", "synthetic_cifar10"),
           "model": ("mlp", "cnn", "resnet18"), "optimizer": ("sgd", "adam", "adamw")}


def _flag(text: str) -> bool:
    """W&B's ${args} writes booleans as True/False; a person may type 1/0, yes/no."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _integer(text: str) -> int:
    """64, or 64.0 (a W&B q_uniform value): a whole number."""
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


_flag.__name__, _integer.__name__ = "boolean", "int"  # argparse's error names the type: "invalid int value: 'x'"


class _OneLine(argparse.ArgumentParser):
    def error(self, message: str):  # `--lr: invalid float value: 'abc'`, like hpo's own flags; exit 2
        found = re.match(r"argument ([-\w]+)(?:/[-\w]+)?: (.*)", message)
        self.exit(2, f"hpo.train: {found[1]}: {found[2]}\n" if found else f"hpo.train: {message}\n")


def parser() -> argparse.ArgumentParser:
    """One flag per DEFAULTS key, as --name=value or --name value (what W&B's ${args} writes), --name or
    --name-with-dashes; an unknown flag or a bad value is one line and exit 2, as an argparse program that
    `wandb agent` runs. Only the flags given come back (train() fills in the rest)."""
    p = _OneLine(prog="python -m hpo.train", allow_abbrev=False, argument_default=argparse.SUPPRESS,
                 description="hpo's built-in trainer, alone: one JSON line per epoch on stdout.")
    for key, default in DEFAULTS.items():
        kind = _flag if isinstance(default, bool) else _integer if isinstance(default, int) else type(default)
        p.add_argument(*dict.fromkeys([f"--{key}", f"--{key.replace('_', '-')}"]), dest=key, type=kind,
                       choices=CHOICES.get(key), metavar=key.upper(), help=f"default: {default}")
    return p


def parse_args(argv: list[str]) -> dict[str, Any]:
    """`--name=value` / `--name value` pairs (what W&B's ${args} writes) -> the typed config they set."""
    return vars(parser().parse_args(argv))
