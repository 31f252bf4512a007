"""Where a tiny model's training step goes on a GPU: milliseconds per step of the default sweep's MLP.

    python bench/bench_step.py            # on a GPU machine (bench/gpu_check.sh runs it); CPU: eager rows only

Rows (digits-shaped: 64 inputs, hidden 128, 10 classes, batch 64, Adam):
  eager            what hpo.train did before issue 12 (unfused Adam)
  eager_fused      hpo.train's GPU step now (models.step_plan: fused Adam, no autocast for the MLP)
  cuda_graph       the whole step (forward, backward, fused Adam) captured once and replayed
and hpo.train itself with `cuda_graphs` off and on (hpo.train_step): the default MLP's warm 27-epoch trial, and
resnet18 on synthetic CIFAR-10 (images/s), each with its val_acc, so speed is not bought with a different result.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn


def model(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10)).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def eager(device, fused: bool, steps: int) -> float:
    net = model(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, **({"fused": True} if fused else {}))
    x, y = torch.randn(64, 64, device=device), torch.randint(0, 10, (64,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    for _ in range(20):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


def graphed(device, steps: int) -> tuple[float, float]:
    net = model(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, fused=True, capturable=True)
    x, y = torch.randn(64, 64, device=device), torch.randint(0, 10, (64,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's CUDA graph docs do
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    sync(device)
    capture_ms = (time.perf_counter() - t0) * 1000
    for _ in range(20):
        g.replay()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        g.replay()
    sync(device)
    return (time.perf_counter() - start) / steps * 1000, capture_ms


def trainer_rows(graphs: bool) -> dict:
    """hpo.train as a trial runs it (a warm worker: its second trial), with cuda_graphs off or on."""
    from hpo.train import train

    mlp = {"model": "mlp", "hidden": 128, "epochs": 27, "lr": 0.003, "cuda_graphs": graphs}
    train({**mlp, "epochs": 1})  # CUDA and the data: a worker's first trial pays them
    start = time.perf_counter()
    m = train(mlp)
    out = {"mlp_warm_trial_s": round(time.perf_counter() - start, 3), "mlp_val_acc": round(m["val_acc"], 4)}
    rn = {"model": "resnet18", "dataset": "synthetic_cifar10", "epochs": 2, "batch_size": 256,
          "max_train_samples": 20_000, "max_eval_samples": 2_000, "lr": 0.001, "cuda_graphs": graphs}
    train({**rn, "epochs": 1, "max_train_samples": 2_048})
    start = time.perf_counter()
    m = train(rn)
    took = time.perf_counter() - start
    out.update(resnet18_s=round(took, 2), resnet18_images_per_s=round(2 * 20_000 / took, 1),
               resnet18_val_acc=round(m["val_acc"], 4))
    return out


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = 2000
    rows = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "steps": steps,
            "eager_ms": round(eager(device, False, steps), 4)}
    if device.type == "cuda":
        rows["eager_fused_ms"] = round(eager(device, True, steps), 4)
        replay, capture = graphed(device, steps)
        rows.update(cuda_graph_ms=round(replay, 4), cuda_graph_capture_ms=round(capture, 1))
        # a default-sweep trial: 27 epochs x 23 steps of 64 digits
        rows["trial_steps_s"] = {k[:-3]: round(v * 27 * 23 / 1000, 3) for k, v in rows.items()
                                 if k.endswith("_ms") and "capture" not in k}
        rows["trainer"] = {f"graphs_{'on' if g else 'off'}": trainer_rows(g) for g in (False, True)}
    print(json.dumps(rows, indent=1))
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
