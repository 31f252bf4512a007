"""A sweep resolved from a sweep.yaml and CLI settings; nothing is written until it runs.

    from hpo import sweep
    result = sweep.run(sweep.Settings("sweep.yaml", trials=12, workers=2))
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import spec as specmod
from hpo import storage as storagemod
from hpo import tracking, workers
from hpo.errors import UsageError

BACKENDS = ("optuna", "ray", "wandb")
DEFAULT_BUDGET = 20


@dataclass(frozen=True)
class Settings:
    """What a user chooses on the command line (or from Python)."""

    sweep_file: str | Path = "sweep.yaml"
    space: str | Path | None = None
    backend: str = "optuna"
    study: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    root: str | Path = "runs"
    trials: int | None = None
    gpus: str = "auto"
    workers_per_gpu: int = 1
    workers: int | None = None
    trainer: str | None = None
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific settings
    inspect_only: bool = False  # status / best / dashboard: read a sweep, whatever its backend


@dataclass(frozen=True)
class Sweep:
    """Everything a backend needs, validated."""

    spec: specmod.Spec
    name: str
    dir: Path
    storage: str
    tracking_uri: str
    budget: int
    slots: tuple[workers.Slot, ...]
    backend: str
    trainer: str | None
    sweep_text: str
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> list[dict[str, Any]] | None:
        return self.spec.grid() if self.spec.method == "grid" else None


def study_name(spec: specmod.Spec, override: str | None) -> str:
    name = override or spec.name or "sweep"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", name):
        field_name = "--study" if override else "name"
        raise UsageError(f"{field_name}: {name!r} must be letters, digits, _ . - (at most 100)")
    return name


def _budget(s: Settings, spec: specmod.Spec) -> int:
    if s.trials is not None and s.trials < 1:
        raise UsageError(f"--trials: must be at least 1 (got {s.trials})")
    budget = s.trials or spec.run_cap or DEFAULT_BUDGET
    if spec.method == "grid":
        budget = min(budget if (s.trials or spec.run_cap) else spec.grid_size(), spec.grid_size())
    return budget


def _check_trainer(ref: str | None) -> None:
    if not ref:
        return
    module, _, fn = ref.partition(":")
    if not module or not fn:
        raise UsageError(f"--trainer: expected package.module:function, got {ref!r}")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UsageError(f"--trainer: no module named {module!r}")


def prepare(s: Settings) -> Sweep:
    """Validate the sweep file and every setting; raise UsageError on the first problem."""
    if s.backend not in BACKENDS:
        raise UsageError(f"--backend: {s.backend!r} is not one of {', '.join(BACKENDS)}")
    spec = specmod.load(s.sweep_file, s.space)
    if s.backend == "optuna" and not s.inspect_only:
        from hpo import space

        space.check(spec)
    name = study_name(spec, s.study)
    if Path(s.root).exists() and not Path(s.root).is_dir():
        raise UsageError(f"--root: {s.root} is a file, not a folder")
    sweep_dir = Path(s.root) / name
    store = s.storage or str(sweep_dir / "optuna.log")
    if "://" in store and not storagemod.is_rdb(store):
        raise UsageError(f"--storage: unknown scheme in {storagemod.mask(store)}; use a file path or an RDB URL")
    uri = s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_uri(sweep_dir)
    _check_trainer(s.trainer)
    gpus = workers.parse_gpus(s.gpus)
    if s.workers is not None and gpus and s.gpus != "auto":
        raise UsageError("--workers: for CPU workers; with --gpus use --workers-per-gpu")
    slots = workers.plan(gpus, s.workers_per_gpu, s.workers)
    if not spec.metric:  # W&B asks for it only with bayes or hyperband; hpo records every trial's value
        raise UsageError("metric.name: required: hpo records each trial's last value of this metric")
    text = Path(s.sweep_file).read_text(encoding="utf-8")
    return Sweep(spec, name, sweep_dir, store, uri, _budget(s, spec), tuple(slots), s.backend,
                 s.trainer, text, s.progress, dict(s.options))


def run(s: Settings | Sweep):
    """Run a sweep to its budget on the chosen backend; return its Result."""
    sw = s if isinstance(s, Sweep) else prepare(s)
    if sw.backend == "optuna":
        from hpo.backends import optuna as backend
    elif sw.backend == "ray":
        from hpo.backends import ray as backend  # type: ignore[no-redef]
    else:
        from hpo.backends import wandb as backend  # type: ignore[no-redef]
    return backend.run(sw)

