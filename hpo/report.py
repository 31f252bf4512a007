"""What a trial's `report(step, metrics)` does, shared by every backend.

The trainer calls `report` once per epoch. Each backend supplies a `should_stop`
(Optuna's pruner, Ray's scheduler, W&B's hyperband) and a sink for the metrics;
this module supplies the rest: NaN detection, MLflow batching, the outcome.
"""

from __future__ import annotations

import importlib
import math
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hpo.errors import UsageError


class Pruned(Exception):
    """Raised by `report` when the early-termination rule stops the trial."""


class TrialFailed(Exception):
    """Raised by `report` when a trial cannot go on (e.g. a NaN loss)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Interrupted(BaseException):
    """The worker was asked to stop (SIGTERM / Ctrl-C): not the trial's fault."""


@dataclass
class Reporter:
    """The `report` callable handed to a trainer for one trial."""

    metric: str | None
    sink: Callable[[int, Mapping[str, float]], None]
    should_stop: Callable[[int, float], bool] = lambda step, value: False
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append((int(step), metrics))
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        self.sink(int(step), {k: v for k, v in metrics.items() if math.isfinite(v)})
        if bad:
            raise TrialFailed("nan", f"{', '.join(bad)} is not finite at step {step}")
        value = metrics.get(self.metric) if self.metric else None
        if value is not None and self.should_stop(int(step), value):
            raise Pruned(f"stopped at step {step}")

    def last(self, name: str | None) -> float | None:
        for _, m in reversed(self.history):
            if name in m:
                return m[name]
        return None


@dataclass(frozen=True)
class Outcome:
    """How one trial ended: state is one of complete, pruned, failed, interrupted."""

    state: str
    value: float | None = None
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None

    def tags(self) -> dict[str, str]:
        out = {"hpo.state": self.state}
        for key in ("reason", "error_type", "error"):
            if getattr(self, key):
                out[f"hpo.{key}"] = str(getattr(self, key))[:1000]
        return out


def run_trainer(trainer: Callable, config: Mapping[str, Any], reporter: Reporter) -> Outcome:
    """Run one trial; every way it can end becomes an Outcome (Interrupted propagates)."""
    try:
        final = trainer(dict(config), reporter) or {}
    except Pruned as exc:
        return Outcome("pruned", reporter.last(reporter.metric), reason=str(exc))
    except TrialFailed as exc:
        return Outcome("failed", reason=exc.reason, error_type="TrialFailed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failed trial is data, not a crash
        return _failure(exc)
    value = reporter.last(reporter.metric)
    if value is None and reporter.metric and isinstance(final, Mapping):
        value = final.get(reporter.metric)
    if reporter.metric and value is None:
        return Outcome("failed", reason="no metric", error=f"the trainer never reported {reporter.metric!r}")
    if value is not None and not math.isfinite(float(value)):
        return Outcome("failed", reason="nan", error=f"{reporter.metric} is {value}")
    return Outcome("complete", None if value is None else float(value))


def _failure(exc: Exception) -> Outcome:
    name = type(exc).__name__
    oom = name == "OutOfMemoryError" or "out of memory" in str(exc).lower()
    if oom and "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the worker keeps serving: give the memory back
    return Outcome("failed", reason="oom" if oom else "error", error_type=name, error=str(exc))


def load_trainer(ref: str | None) -> Callable:
    """`package.module:function` -> the function; None -> hpo's built-in trainer."""
    if not ref:
        from hpo.train import train

        return train
    module, _, name = ref.partition(":")
    if not module or not name:
        raise UsageError(f"--trainer: expected package.module:function, got {ref!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--trainer: cannot load {ref!r} ({exc})") from None
    if not callable(fn):
        raise UsageError(f"--trainer: {ref!r} is not callable")
    return fn


def environment_tags() -> dict[str, str]:
    """What it takes to reproduce a run: interpreter, torch and CUDA versions, the host."""
    tags = {"hpo.python": platform.python_version(), "hpo.host": platform.node()}
    if "torch" in sys.modules:
        import torch

        tags["hpo.torch"] = torch.__version__
        tags["hpo.cuda"] = str(torch.version.cuda or "none")
    return tags


def git_sha(cwd: str | None = None) -> str | None:
    """The commit of the working directory, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dataset_tags(config: Mapping[str, Any], trainer_ref: str | None) -> dict[str, str]:
    """Name and fingerprint of the built-in trainer's dataset (already cached by the trial)."""
    if trainer_ref or "hpo.data" not in sys.modules:
        return {}
    from hpo import data, train

    name = str(config.get("dataset", train.DEFAULTS["dataset"]))
    try:
        ds = data.load(name, str(config.get("data_dir", train.DEFAULTS["data_dir"])))
    except Exception:  # noqa: BLE001 - the trial already failed on it
        return {"hpo.dataset": name}
    return {"hpo.dataset": name, "hpo.dataset_fingerprint": ds.fingerprint}
