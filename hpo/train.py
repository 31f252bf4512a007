"""The built-in trainer: plain PyTorch, no engine in sight.

    train(config, report) -> final metrics

`report(step, metrics)` is called once per epoch with train_loss, val_loss,
val_acc, epoch_seconds and n_params (the model's parameter count), plus on a GPU
gpu_peak_mem_mb (the trial's peak allocated memory). Whoever calls `train` supplies `report`; it may raise
to stop the trial early (that is how pruning reaches the trainer). When `report`
has a `model` hook (hpo's does), the trained network goes to it at the end,
wrapped to take raw inputs, with the validation split for its evaluation.

Run alone, the way `wandb agent` starts it:

    python -m hpo.train --lr=0.01 --hidden=64
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, Mapping

from hpo.train_args import CHOICES, DEFAULTS, parse_args  # noqa: F401 - the trainer's settings, here too

if __name__ == "__main__":  # `--help` and a bad flag answer before torch loads (2-3 s)
    parse_args(sys.argv[1:])

import torch  # noqa: E402
from torch import nn  # noqa: E402

from hpo import data, models  # noqa: E402
from hpo.train_step import Step  # noqa: E402

Report = Callable[[int, Mapping[str, float]], None]

def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warm_cuda() -> None:
    """CUDA's context and cuBLAS's handle, made before the first trial needs them (a worker calls this while it
    waits for the sweep to be set up); nothing without a GPU."""
    if torch.cuda.is_available():
        a = torch.ones(8, 8, device="cuda")
        (a @ a).sum().item()


def _batches(n: int, size: int, device: torch.device, shuffle: bool):
    order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
    for start in range(0, n, size):
        yield order[start : start + size]


def _limit(x: torch.Tensor, y: torch.Tensor, n: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(n or 0)
    return (x[:n], y[:n]) if n > 0 else (x, y)


def _amp(device: torch.device, enabled: bool, graphs: bool = False):
    if not (enabled and device.type == "cuda"):
        return torch.autocast("cpu", enabled=False), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    # A graph must not keep autocast's cached weight casts (torch's CUDA graph docs)
    return torch.autocast("cuda", dtype=dtype, cache_enabled=not graphs), scaler


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float, batch: int, autocast) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    with torch.no_grad(), autocast:
        for idx in _batches(len(y), max(batch, 512), x.device, shuffle=False):
            logits = model(x[idx].float() / scale)
            loss_sum += nn.functional.cross_entropy(logits.float(), y[idx], reduction="sum")
            correct += (logits.argmax(1) == y[idx]).sum()
    # .item() is a CPU-GPU sync point: once per evaluation, not per batch.
    return loss_sum.item() / len(y), correct.item() / len(y)


def train(config: Mapping[str, Any], report: Report | None = None) -> dict[str, float]:
    """Train one model with `config` (missing keys take DEFAULTS); return the last epoch's metrics."""
    cfg = {**DEFAULTS, **config}
    torch.manual_seed(int(cfg["seed"]))
    device = _device()
    ds = data.load(cfg["dataset"], str(cfg["data_dir"]))
    plan = models.step_plan(cfg["model"], device.type, bool(cfg["amp"]), bool(cfg["cuda_graphs"]))
    layout = torch.channels_last if plan.channels_last else torch.contiguous_format
    # Tiny sets live on the device whole; batches are index slices, no DataLoader.
    x_tr, y_tr = _limit(ds.x_train, ds.y_train, cfg["max_train_samples"])
    x_val, y_val = _limit(ds.x_val, ds.y_val, cfg["max_eval_samples"])
    x_tr, y_tr = x_tr.to(device).contiguous(memory_format=layout), y_tr.to(device)
    x_va, y_va = x_val.to(device).contiguous(memory_format=layout), y_val.to(device)
    model = models.build(cfg["model"], ds.shape, ds.num_classes, cfg["hidden"], cfg["dropout"])
    model = model.to(device, memory_format=layout)
    opt = models.optimizer(cfg["optimizer"], model.parameters(), float(cfg["lr"]),
                           float(cfg["momentum"]), float(cfg["weight_decay"]), fused=plan.fused,
                           capturable=plan.graphs)
    autocast, scaler = _amp(device, plan.amp, plan.graphs)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = plan.channels_last  # fixed shapes: cuDNN picks its fastest kernels once
        torch.cuda.reset_peak_memory_stats(device)
    batch = int(cfg["batch_size"])
    n_params = float(sum(p.numel() for p in model.parameters()))  # a second objective: the model's size
    metrics: dict[str, float] = {}
    step = Step(model, opt, x_tr, y_tr, ds.scale, autocast, scaler, batch, plan.graphs)
    for epoch in range(1, int(cfg["epochs"]) + 1):
        start = time.perf_counter()
        model.train()
        step.new_epoch()
        for idx in _batches(len(y_tr), batch, device, shuffle=True):
            step(idx)
        val_loss, val_acc = _evaluate(model, x_va, y_va, ds.scale, batch, autocast)
        metrics = {
            "train_loss": step.loss_sum.item() / len(y_tr),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_seconds": time.perf_counter() - start,
            "n_params": n_params,
        }
        if device.type == "cuda":  # a host-side counter: no sync
            metrics["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if report is not None:
            report(epoch, metrics)
    keep = getattr(report, "model", None)  # hpo's report keeps the best trials' models; a plain callable does not
    if callable(keep):
        model.eval()
        keep(models.RawInput(model, ds.shape, ds.scale, ds.channels_last), input_example=ds.raw(x_val[:5]),
             validation=(ds.raw(x_val), y_val.numpy(), [str(c) for c in range(ds.num_classes)]))
    return metrics


def _print_report(step: int, metrics: Mapping[str, float]) -> None:
    if any(not math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"non-finite metric at epoch {step}: {dict(metrics)}")
    print(json.dumps({"epoch": step, **{k: round(v, 6) for k, v in metrics.items()}}), flush=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    from hpo.under_wandb_agent import wandb_run_reporter

    with wandb_run_reporter(config) as report:
        train(config, report or _print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
