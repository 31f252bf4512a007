"""The built-in trainer's optimisation step: eager, or replayed from a CUDA graph.

On a GPU a small model's step is bound by kernel launches, not arithmetic: the
default sweep's MLP took 1.33 ms per step eagerly on an H200 and 0.07 ms as one
replayed CUDA graph (bench/bench_step.py). So on CUDA, after WARMUP real steps run
eagerly on a side stream (cuDNN, cuBLAS and the optimizer's state settle there),
the whole step (gather the batch, forward, loss, backward, fused optimizer step,
the epoch's loss sum) is captured once per trial and replayed for every full
batch; the last, shorter batch of an epoch runs eagerly on the same parameters,
gradients and optimizer state. Every batch is still trained exactly once, in the
same order: the graph changes how a step is launched, not what it computes.
A capture that fails falls back to the eager step for the rest of the trial.
On a CPU (and with fp16's GradScaler) the step is the plain eager one.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch
from torch import nn

WARMUP = 3  # eager steps before the capture (torch's CUDA graph docs: warm up on a side stream)
_capture_failed = False  # once a capture fails, this process (a worker: many trials) steps eagerly


class Step:
    """`step(idx)` trains on the rows `idx` of (x, y) and adds loss x rows to `self.loss_sum` (on the device)."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 scale: float, autocast: Any, scaler: Any, batch: int, graphs: bool):
        self.model, self.opt, self.x, self.y, self.scale = model, opt, x, y, scale
        self.autocast, self.scaler, self.batch = autocast, scaler, batch
        self.loss_sum = torch.zeros((), device=x.device)  # one tensor for the whole trial: the graph adds to it
        self.graphs = graphs and x.device.type == "cuda" and scaler is None and not _capture_failed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.idx: torch.Tensor | None = None  # the graph's batch: copied into before each replay
        self.eager_steps = 0
        self.side = torch.cuda.Stream() if self.graphs else None

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def new_epoch(self) -> None:
        self.loss_sum.zero_()

    def __call__(self, idx: torch.Tensor) -> None:
        full = len(idx) == self.batch
        if full and self.graph is None and self.graphs and self.eager_steps >= WARMUP:
            self._capture()
        if full and self.graph is not None:
            self.idx.copy_(idx)
            self.graph.replay()
            return
        if self.side is not None and self.graph is None:  # warm-up: real steps, on the side stream
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._eager(idx)
            torch.cuda.current_stream().wait_stream(self.side)
        else:
            self._eager(idx)
        self.eager_steps += 1

    def _loss(self, idx: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return nn.functional.cross_entropy(self.model(self.x[idx].float() / self.scale).float(), self.y[idx])

    def _eager(self, idx: torch.Tensor) -> None:
        loss = self._loss(idx)
        # After a capture the gradients are the graph's own tensors: zeroed in place, never replaced.
        self.opt.zero_grad(set_to_none=self.graph is None)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.loss_sum += loss.detach() * len(idx)

    def _capture(self) -> None:
        global _capture_failed
        torch.cuda.synchronize()
        idx = torch.zeros(self.batch, dtype=torch.long, device=self.x.device)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        self.opt.zero_grad(set_to_none=True)  # the backward in the graph allocates the gradients it writes
        try:
            # thread_local: CUDA work of the worker's other threads cannot spoil this capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self._loss(idx)
                loss.backward()
                self.opt.step()
                self.loss_sum.add_(loss.detach() * self.batch)
        except Exception as exc:  # noqa: BLE001 - an op that cannot be captured: the eager step, as before
            torch.cuda.set_stream(stream)  # a capture that failed at its end leaves torch on its capture stream
            _capture_failed, self.graphs, self.side = True, False, None
            self.opt.zero_grad(set_to_none=True)
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            print(f"hpo.train: CUDA graph capture failed ({type(exc).__name__}: {exc}); eager steps from here on",
                  file=sys.stderr)
            return
        self.graph, self.idx = graph, idx
