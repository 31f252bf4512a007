"""The value types of a sweep: Settings in (what a user chose), a Plan (validated, ready to run), a Result out.

A leaf module: everything else imports these, they import nothing of hpo at run time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.slots import Slot
    from hpo.spec import Spec
    from hpo.storage import Counts


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
    workers_per_gpu: int | str = 1  # N, or `auto` / `auto:CAP` (hpo.packing; the optuna engine)
    workers: int | None = None
    trainer: str | None = None
    retries: int = 0
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific settings (ray_address, project...)
    inspect_only: bool = False  # status / best / dashboard: read a sweep, whatever its backend


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
    options: dict[str, Any] = field(default_factory=dict)

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
        head = f"no trial finished ({c.failed} failed, {c.retried} lost to dead workers or interrupts)"
        if self.aborted:
            head = self.aborted
        if not self.failures:
            return head
        (what, n), = Counter(self.failures).most_common(1)
        return f"{head}; commonest failure: {what} ({n}x)"
