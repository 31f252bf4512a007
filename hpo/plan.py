"""The value types of a sweep: Settings in (what a user chose), a Plan (validated, ready to run), a Result out.

A leaf module: everything else imports these, they import nothing of hpo at run time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.slots import Slot
    from hpo.spec import Spec
    from hpo.storage import Counts


@dataclass(frozen=True)
class Options:
    """The settings only some engines or commands read; every one has a default that means "not asked"."""

    optuna_pruner: str | None = None  # --optuna-pruner: sha / hyperband (None: the default, sha)
    ray_scheduler: str = "asha"  # --ray-scheduler
    ray_address: str | None = None  # --ray-address: join a Ray cluster
    ray_num_cpus: int | None = None  # a local Ray's CPUs (None: HPO_RAY_NUM_CPUS, else every core)
    seed: int | None = None  # the Ray searcher's seed
    project: str | None = None  # --project (W&B)
    entity: str | None = None  # --entity (W&B)
    offline: bool = False  # --offline (W&B)
    online_sweep: Any = None  # the W&B server's sweep, once the backend made it (its prepare step)
    keep_models: int | None = None  # --keep-models (None: what the sweep kept before, else 3)
    register: str | None = None  # --register NAME
    no_report: bool = False  # --no-report
    pack_cap: int | None = None  # --workers-per-gpu auto:CAP on GPUs
    gpu_reader: Any = None  # an NVML stand-in (tests)
    validate_only: bool = False  # `hpo validate`: check, start nothing

    @classmethod
    def of(cls, given: Options | dict[str, Any] | None) -> Options:
        """Options from a dict (the Python API's spelling); a key no option has is a TypeError naming it."""
        if given is None or isinstance(given, Options):
            return given or cls()
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"options: unknown {', '.join(unknown)}")
        return cls(**{k: v for k, v in given.items() if v is not None})  # None: not given, the default


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
    gpus: str | None = None  # None: every GPU found, else CPU workers; "auto": every GPU found, at least one
    workers_per_gpu: int | str = 1  # N, or `auto` / `auto:CAP` (hpo.packing; the optuna engine)
    workers: int | None = None
    trainer: str | None = None
    retries: int = 0
    progress: bool = True
    options: Options = field(default_factory=Options)  # engine-specific settings (a dict is accepted)
    inspect_only: bool = False  # status / best / dashboard: read a sweep, whatever its backend

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", Options.of(self.options))


@dataclass(frozen=True)
class Plan:
    """A sweep ready to run: the spec, where it writes, its budget and its worker slots."""

    spec: Spec
    name: str
    dir: Path
    storage: str
    tracking_uri: str
    budget: int
    slots: tuple[Slot, ...]
    backend: str
    trainer: str | None
    sweep_text: str
    retries: int = 0
    progress: bool = True
    options: Options = field(default_factory=Options)

    @property
    def grid(self) -> list[dict[str, Any]] | None:
        return self.spec.grid() if self.spec.method == "grid" else None


@dataclass(frozen=True)
class Result:
    """How a sweep ended."""

    study: str
    counts: Counts
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | str | None  # the engine's own trial number (the child run's hpo.trial tag)
    parent_run_id: str
    best_run_id: str | None = None
    interrupted: bool = False
    aborted: str | None = None  # why the sweep stopped before its budget (crash loop, engine error)
    failures: dict[str, int] = field(default_factory=dict)  # "reason: error" -> how many trials
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """130 interrupted; 1 when no trial finished (complete or pruned) or the sweep aborted; else 0."""
        if self.interrupted:
            return 130
        return 1 if self.sweep_failed or self.extra.get("register_error") else 0

    @property
    def sweep_failed(self) -> bool:
        """Aborted, or no trial finished: the parent run ends FAILED (a registry that refused does not)."""
        return bool(self.aborted) or self.counts.complete + self.counts.pruned == 0

    def failure_summary(self) -> str:
        """One line naming the commonest failure, for a sweep in which no trial finished."""
        c = self.counts
        if self.extra.get("register_error") and not self.aborted and c.complete:
            return str(self.extra["register_error"])
        head = f"no trial finished ({c.failed} failed, {c.retried + c.interrupted} lost to dead workers or interrupts)"
        if self.aborted:
            head = self.aborted
        if not self.failures:
            return head
        (what, n), = Counter(self.failures).most_common(1)
        return f"{head}; commonest failure: {what} ({n}x)"
