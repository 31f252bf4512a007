"""The port: everything an engine may ask of or tell the Session, and nothing else.

An engine (hpo.backends.*) holds a `SessionPort`, never the Session: it reads the sweep through it,
reports its trials' events to it and leaves the rest to it. The Session alone opens and closes the study's
trials and their MLflow child runs, counts the budget, decides what a dead worker means and ends the
sweep. `tests/test_port.py` checks that no engine reaches past this Protocol, and runs the lifecycle
rules through it against a scripted in-process engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.gpumon import Monitor
    from hpo.storage import Counts
    from hpo.trial import Outcome


@dataclass(frozen=True)
class Parent:
    """Where a sweep's trials are recorded: what a worker, agent or Ray trial needs to open its child run."""

    experiment_id: str
    run_id: str
    launch: str  # this `hpo run`'s mark (`hpo.controller`): the workers it started wait for it


class SessionPort(Protocol):
    # -- what an engine reads -------------------------------------------------------------
    @property
    def aborting(self) -> str | None: ...  # why the sweep is stopping (a crash loop), or None
    @property
    def study(self) -> optuna.Study: ...  # the sweep's study: the optuna engine's queue; read-only to others
    @property
    def parent(self) -> Parent: ...
    @property
    def gpus(self) -> Monitor: ...  # NVML's view of the sweep's GPUs (what `--workers-per-gpu auto` packs by)

    def snapshot(self) -> tuple[list[FrozenTrial], Counts]: ...  # one read of the study, and its counts
    def remaining(self) -> int: ...  # trials still to start for the budget to be met
    def top_up(self, grid: list[dict[str, Any]] | None) -> tuple[list[FrozenTrial], Counts]: ...
    # ^ the optuna engine's queue filled to the budget (failed trials first with --retries); the study as
    #   read, the trials just queued counted as waiting

    # -- a trial's life, for engines whose trials the Session writes into the study (Ray, W&B) --
    def trial_started(self, key: Any, number: int | str, params: Mapping[str, Any], worker: str = "",
                      cuda: str = "", attrs: Mapping[str, Any] | None = None) -> None: ...
    def trial_updated(self, key: Any, run_id: str = "", worker: str = "", cuda: str = "") -> None: ...
    def trial_reported(self, key: Any, step: int, value: float | None) -> None: ...
    def trial_finished(self, key: Any, outcome: Outcome, close: bool = False,
                       attrs: Mapping[str, Any] | None = None) -> None: ...
    def trial_lost(self, key: Any, reason: str, detail: str = "") -> Outcome: ...  # what it became
    def trial_tags(self, key: Any, find: tuple[str, str] | None = None) -> dict[str, str]: ...

    # -- workers (hpo.supervisor calls these for local pools) -------------------------------
    def worker_gone(self, worker: str, pid: int, reason: str, detail: str = "") -> int: ...
    def worker_exited(self, what: str, log: str = "", pool: int = 0) -> None: ...
    def fail_stale(self) -> int: ...  # trials whose worker (any machine) stopped its heartbeat
    def fail_orphans(self, reason: str, detail: str = "") -> int: ...  # RUNNING trials of no live local worker

    # -- the sweep --------------------------------------------------------------------------
    def refresh(self, workers: int, trials: list[FrozenTrial] | None = None,
                counts: Counts | None = None) -> None: ...
    def tag_parent(self, tags: Mapping[str, str]) -> None: ...
    def packed(self, decisions: list) -> None: ...  # what `--workers-per-gpu auto` decided


MEMBERS = frozenset(
    name for name in vars(SessionPort) if not name.startswith("_") and name not in ("MEMBERS",))
