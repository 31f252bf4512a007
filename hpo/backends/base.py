"""The backend contract: what an engine must do, and the one registry the CLI and `api.run` read.

An engine translates the Plan (search space, early stopping) into its own terms,
starts trials, and reports their events to the Session. It never opens or closes
the study or the MLflow parent run, never closes a child run of a trial it did not
run itself, and never decides the exit code: the Session does all of that the
same way for every engine. To add an engine: a package whose module holds `BACKEND` (these methods),
named in ENGINES here or, from another distribution, under the `hpo.backends` entry-point group:

    [project.entry-points."hpo.backends"]
    myengine = "my_package.engine"      # or "my_package.engine:BACKEND"
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hpo.errors import UsageError

if TYPE_CHECKING:
    from hpo.plan import Options, Plan
    from hpo.backends.port import SessionPort
    from hpo.spec import Spec


@dataclass(frozen=True)
class Schedule:
    """The early stopping an engine will build for a spec: `hpo explain` prints it, tests check against it."""

    engine: str
    rungs: tuple[int, ...] = ()  # steps (1-based reports) at which a trial may be stopped
    stops_only_at_rungs: bool = True  # False: a trial past a rung can still be stopped later (W&B)
    lines: tuple[str, ...] = ()
    problem: str | None = None  # set when the engine cannot run the sweep at all

    @property
    def runs(self) -> bool:
        return self.problem is None


class Backend(Protocol):
    """One engine. `name` is what `--backend` takes."""

    name: str
    mirrored: bool  # True: the Session writes each trial into the Optuna study (Ray, W&B)

    def check(self, plan: Plan) -> list[str]:
        """What this engine cannot run in the plan, one `field: what is wrong` line each (empty: it can)."""

    def schedule(self, spec: Spec, options: Options) -> Schedule:
        """The rungs at which this engine stops trials, from the code that builds its pruner/scheduler."""

    def begin(self, plan: Plan) -> Plan:
        """Create what must exist outside hpo's stores before the Session writes anything (the sweep on
        W&B's server); return the plan to run, e.g. with that sweep's id in its options."""

    def prestart(self, plan: Plan, port: SessionPort) -> Any:
        """Once the study exists, and while the Session opens the MLflow parent run: start what is slow and
        writes no trial (worker processes loading their libraries). The Session hands what this returns to
        `run` as `early`, and calls its `stop()` if the sweep ends before `run`. None: nothing."""

    def run(self, plan: Plan, port: SessionPort, early: Any = None) -> None:
        """Run trials until the budget is met or `port.aborting`; raise KeyboardInterrupt if interrupted.
        Everything it tells or asks the Session goes through `port` (hpo.backends.port)."""


# name -> module that holds `BACKEND`; imported only when asked for (Ray and wandb are heavy).
ENGINES = {"optuna": "hpo.backends.optuna", "ray": "hpo.backends.ray", "wandb": "hpo.backends.wandb"}
ENTRY_POINTS = "hpo.backends"  # other distributions' engines: NAME = "module[:attribute]"


def engines() -> dict[str, str]:
    """Every engine `--backend` takes: the built-in ones, then those other packages register."""
    from importlib.metadata import entry_points

    found = dict(ENGINES)
    for ep in entry_points(group=ENTRY_POINTS):
        found.setdefault(ep.name, ep.value)
    return found


def get(name: str) -> Backend:
    """The engine registered under `name`."""
    where = ENGINES.get(name) or engines().get(name)
    if where is None:
        choices = ", ".join(repr(n) for n in engines())
        raise UsageError(f"--backend: invalid choice: {name!r} (choose from {choices})")
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr or "BACKEND")
