"""The built-in trainer, alone: what `wandb agent` runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hpo.train import DEFAULTS, parse_args, train


def test_five_epochs_on_digits_reach_ninety_percent(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpo.train", "--epochs", "5"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=True)
    epochs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["val_acc"] > 0.9
    assert {"train_loss", "val_loss", "val_acc", "epoch_seconds"} <= set(epochs[-1])


def test_wandb_style_arguments_are_typed():
    cfg = parse_args(["--lr=0.01", "--hidden=64", "--optimizer=sgd", "--amp=false", "--epochs", "3"])
    assert cfg == {"lr": 0.01, "hidden": 64, "optimizer": "sgd", "amp": False, "epochs": 3}
    with pytest.raises(SystemExit):
        parse_args(["lr=0.01"])


def test_report_is_called_once_per_epoch_and_can_stop_training():
    seen = []

    class Stop(Exception):
        pass

    def report(step, metrics):
        seen.append((step, set(metrics)))
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train({"epochs": 6, "hidden": 16}, report)
    assert [s for s, _ in seen] == [1, 2]
    assert seen[0][1] == {"train_loss", "val_loss", "val_acc", "epoch_seconds", "n_params"}


# Every optimizer on the small models; resnet18 once (its optimizer code path is the same).
@pytest.mark.parametrize("model,opt", [(m, o) for m in ("mlp", "cnn") for o in ("sgd", "adam", "adamw")]
                         + [("resnet18", "adam")])
def test_every_model_and_optimizer_trains_one_epoch(model, opt):
    metrics = train({"epochs": 1, "model": model, "optimizer": opt, "hidden": 32, "batch_size": 256})
    assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["train_loss"] > 0


def test_same_seed_same_result():
    a = train({"epochs": 2, "hidden": 16, "seed": 3})
    b = train({"epochs": 2, "hidden": 16, "seed": 3})
    assert a["val_loss"] == b["val_loss"]
    assert DEFAULTS["dataset"] == "digits"


def test_the_seed_decides_the_result():
    """A trainer that ignored `seed` would give the same curve for every seed."""
    a = train({"epochs": 2, "hidden": 16, "seed": 3})
    b = train({"epochs": 2, "hidden": 16, "seed": 4})
    assert a["val_loss"] != b["val_loss"]
