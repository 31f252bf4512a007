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
    assert parse_args(["--batch-size=32", "--hidden=64.0", "--amp=True"]) == {"batch_size": 32, "hidden": 64,
                                                                               "amp": True}
    with pytest.raises(SystemExit):
        parse_args(["lr=0.01"])


@pytest.mark.parametrize("args, line", [
    (["--lr", "abc"], "hpo.train: --lr: invalid float value: 'abc'"),
    (["--lrr=0.1"], "hpo.train: unrecognized arguments: --lrr=0.1"),  # a typo is refused, not ignored
    (["--optimizer=rmsprop"], "hpo.train: --optimizer: invalid choice: 'rmsprop' (choose from 'sgd', 'adam', 'adamw')"),
    (["--epochs=2.5"], "hpo.train: --epochs: invalid int value: '2.5'"),
])
def test_bad_arguments_are_one_line_and_exit_2_as_an_argparse_program(args, line):
    out = subprocess.run([sys.executable, "-m", "hpo.train", *args], capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines(), out.stdout) == (2, [line], "")


def test_help_lists_every_setting_and_its_default():
    out = subprocess.run([sys.executable, "-m", "hpo.train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key, default in DEFAULTS.items():
        assert f"--{key}" in out.stdout and f"default: {default}" in out.stdout, key


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


# -- the GPU path (issue 12): what runs on a CPU here, and the plan a GPU would get ---------------
def test_the_step_plan_gives_a_gpu_only_what_pays_and_leaves_the_cpu_step_plain():
    from hpo.models import StepPlan, step_plan

    # casts only cost the MLP; every model's full batches replay a CUDA graph (hpo.train_step)
    assert step_plan("mlp", "cuda") == StepPlan(amp=False, fused=True, channels_last=False, graphs=True)
    assert step_plan("cnn", "cuda") == StepPlan(amp=True, fused=True, channels_last=True, graphs=True)
    assert step_plan("resnet18", "cuda", amp=False) == StepPlan(amp=False, fused=True, channels_last=True, graphs=True)
    assert not step_plan("mlp", "cuda", graphs=False).graphs  # `cuda_graphs: false` in the sweep
    for model in ("mlp", "cnn", "resnet18"):
        assert step_plan(model, "cpu") == StepPlan(amp=False, fused=False, channels_last=False, graphs=False)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_a_fused_optimizer_takes_the_same_step(name):
    """`fused=True` (CUDA's one-kernel step; torch runs it on a CPU too) must not change the update."""
    import torch

    from hpo.models import optimizer

    def stepped(fused: bool) -> torch.Tensor:
        w = torch.nn.Parameter(torch.arange(6, dtype=torch.float32))
        opt = optimizer(name, [w], 0.1, 0.9, 1e-4, fused=fused)
        for _ in range(3):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
        assert opt.defaults.get("fused") is (True if fused else opt.defaults.get("fused"))
        return w.detach()

    assert torch.allclose(stepped(True), stepped(False), atol=1e-6)


def test_synthetic_cifar10_is_fixed_learnable_and_needs_no_download(tmp_path):
    from hpo import data

    a, b = data._synthetic("synthetic_cifar10"), data._synthetic("synthetic_cifar10")
    assert a.fingerprint == b.fingerprint and bool((a.x_val[:100] == b.x_val[:100]).all())
    assert tuple(a.x_train.shape) == (50_000, 3, 32, 32) and a.x_train.dtype.is_floating_point is False
    assert a.raw(a.x_val[:2]).shape == (2, 32, 32, 3), "raw rows are CIFAR's own N x H x W x C"
    assert not list(tmp_path.iterdir())
    seen = {}

    def report(step, metrics):
        seen[step] = metrics

    def keep(model, input_example, validation):
        seen["validation"] = validation

    report.model = keep
    metrics = train({"dataset": "synthetic_cifar10", "data_dir": str(tmp_path), "model": "cnn", "epochs": 2,
                     "max_train_samples": 1000, "max_eval_samples": 300, "lr": 0.003}, report)
    assert metrics["val_acc"] > 0.3, "learnable: well above chance (0.1)"
    assert len(seen["validation"][1]) == 300, "max_eval_samples limits the validation split"


def test_max_train_samples_limits_what_an_epoch_trains_on(monkeypatch):
    from hpo import train as train_module

    sizes = []
    batches = train_module._batches
    monkeypatch.setattr(train_module, "_batches", lambda n, *a, **k: (sizes.append(n), batches(n, *a, **k))[1])
    train({"epochs": 1, "hidden": 16, "max_train_samples": 200, "max_eval_samples": 100})
    assert sizes[0] == 200 and sizes[-1] == 100
    sizes.clear()
    train({"epochs": 1, "hidden": 16})
    assert sizes[0] == 1442, "0: the whole split (digits: 1797 less a stratified fifth)"


needs_cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model,optimizer", [("mlp", "adam"), ("mlp", "sgd"), ("cnn", "adamw")])
def test_the_cuda_graph_step_trains_like_the_eager_step(monkeypatch, model, optimizer):
    """Runs on a GPU only (bench/gpu_check.sh runs it there). Without dropout the graphed step must give the eager
    step's curve: the same batches, once each, the same optimizer (Adam's step count advancing in the graph)."""
    from hpo import train_step as step_module

    captures = []
    capture = step_module.Step._capture
    monkeypatch.setattr(step_module.Step, "_capture", lambda self: (capture(self), captures.append(self.graphed)))
    monkeypatch.setattr("torch.backends.cudnn.deterministic", True)  # cuDNN's own run-to-run noise out of the way
    config = {"model": model, "optimizer": optimizer, "dropout": 0.0, "epochs": 4, "hidden": 32, "lr": 0.003,
              "batch_size": 64, "amp": False}
    if model == "cnn":
        config.update(dataset="synthetic_cifar10", max_train_samples=1000, max_eval_samples=200)
    curves = {}
    for graphs in (False, True):
        seen = []
        train({**config, "cuda_graphs": graphs}, lambda step, m: seen.append((m["train_loss"], m["val_acc"])))
        curves[graphs] = seen
    assert captures == [True], "one capture per trial, only with cuda_graphs, and it did not fall back"
    # The CNN (BatchNorm, 4 epochs on 1,000 images, 200 to validate) amplifies float noise: on an H200 its curves
    # differed by up to 3 % in train_loss and 0.045 in val_acc, so its bounds are wider; the MLP's are tight.
    rel, acc = (2e-3, 0.02) if model == "mlp" else (5e-2, 0.06)
    for (loss_e, acc_e), (loss_g, acc_g) in zip(curves[False], curves[True]):
        assert loss_g == pytest.approx(loss_e, rel=rel)
        assert acc_g == pytest.approx(acc_e, abs=acc)
