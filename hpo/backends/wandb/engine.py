"""W&B's own sweep engine (the `sweeps` package) driven with no server.

`sweeps.next_run` proposes each configuration (grid / random / bayes) from every
run so far; `sweeps.stop_runs` applies W&B's Hyperband after each reported
epoch. This module only keeps the run list the engine reads: it never decides.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hpo.spec import Spec, sweeps_pkg
from hpo.trial import State


LAUNCH_KEYS = ("job", "image_uri", "scheduler")


def _sweeps():
    return sweeps_pkg.sweeps()


def engine_config(spec: Spec) -> dict[str, Any]:
    """The sweep config as the engine takes it, with W&B's defaults filled in.

    Departures from the file, all forced by sweeps 0.2.0:
    - `run_cap` is dropped: the package's schema predates it (W&B's server knows
      it); hpo holds the budget itself. So are W&B Launch's `job`, `image_uri`
      and `scheduler`, which it also predates and which do not change the search.
    - nested `parameters` blocks are given flattened under hpo's dotted names:
      the package's SweepConfig silently drops nested blocks when it validates,
      so bayes and random would never vary them.
    - the exponent forms (log_uniform, inv_log_uniform, q_log_uniform), which the
      package rejects as deprecated, are given as the `_values` form of the same law.
    """
    raw = {k: copy.deepcopy(v) for k, v in spec.raw.items() if k not in ("run_cap", *LAUNCH_KEYS)}
    raw["parameters"] = {p.name: _values_form(dict(p.config)) for p in spec.params}
    return copy.deepcopy(dict(_sweeps().SweepConfig(raw)))


def _values_form(c: dict[str, Any]) -> dict[str, Any]:
    d = c.get("distribution")
    if d == "log_uniform":  # exp(U(min, max)) == log-uniform on [e^min, e^max]
        return {"distribution": "log_uniform_values", "min": math.exp(c["min"]), "max": math.exp(c["max"])}
    if d == "inv_log_uniform":  # exp(-U(min, max)) == log-uniform on [e^-max, e^-min]
        return {"distribution": "log_uniform_values", "min": math.exp(-c["max"]), "max": math.exp(-c["min"])}
    if d == "q_log_uniform":
        return {"distribution": "q_log_uniform_values", "min": math.exp(c["min"]), "max": math.exp(c["max"]),
                "q": c.get("q", 1.0)}
    return c


def plain(value: Any) -> Any:
    """numpy scalars (the engine samples with numpy 2) -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


@dataclass
class Engine:
    """The runs of one sweep as W&B's controller sees them, and the budget over them."""

    spec: Spec
    budget: int
    runs: list[Any] = field(default_factory=list)  # sweeps.SweepRun, in hand-out order
    marked: set[str] = field(default_factory=set)  # runs the engine said to stop
    lost: set[str] = field(default_factory=set)  # runs a dead worker or an interrupt ended

    def __post_init__(self) -> None:
        self.config = engine_config(self.spec)
        self.hyperband = (self.config.get("early_terminate") or {}).get("type") == "hyperband"

    def counted(self) -> int:
        """Runs that use the budget: all but those lost to a dead worker or an interrupt."""
        return sum(r.name not in self.lost for r in self.runs)

    def seen(self) -> list[Any]:
        """The runs W&B's engine decides from: not those a dead worker or an interrupt ended, so a grid point
        lost that way is proposed again (as hpo's other engines re-run it), and no search learns from a run
        that never finished."""
        return [r for r in self.runs if r.name not in self.lost]

    def propose(self, name: str) -> dict[str, Any] | None:
        """The engine's next configuration as flat params, or None (budget spent, grid done)."""
        if self.counted() >= self.budget:
            return None
        sweeps = _sweeps()
        with warnings.catch_warnings():  # bayes fits scikit-learn's GP here: its ConvergenceWarnings would tear
            warnings.simplefilter("ignore")  # the live view, and are W&B's engine's business, not the user's
            run = sweeps.next_run(self.config, self.seen(), validate=False)
        if run is None:
            return None
        run.name, run.state, run.config = name, sweeps.RunState.running, plain(run.config)
        self.runs.append(run)
        return {k: v["value"] for k, v in run.config.items()}

    def add(self, name: str, params: Mapping[str, Any], replaces: str | None = None) -> None:
        """A run the controller chose itself (a retry of `replaces`, which then no longer counts)."""
        sweeps = _sweeps()
        self.runs.append(sweeps.SweepRun(name=name, config={k: {"value": v} for k, v in params.items()},
                                         state=sweeps.RunState.running))
        if replaces:
            self.lost.add(replaces)

    def report(self, name: str, metrics: Mapping[str, float]) -> bool:
        """Add one epoch to the run's history; True when the engine says to stop it."""
        run = self._run(name)
        run.history.append(dict(metrics))
        run.summary_metrics.update(metrics)
        if self.hyperband and name not in self.marked:
            self.marked.update(r.name for r in _sweeps().stop_runs(self.config, self.seen(), validate=False))
        return name in self.marked

    def end(self, name: str, state: State | str, infra: bool = False) -> None:
        """A run ended; the engine reads W&B's state for it (a Hyperband stop is "killed", as on W&B)."""
        run, state = self._run(name), State(state)
        run.state = state.wandb_state
        run.stopped = state == State.PRUNED
        if infra:
            self.lost.add(name)

    def resume(self, previous: Iterable[tuple[str, Mapping[str, Any], list[dict], str, bool]]) -> None:
        """Runs of an earlier `hpo run` of this sweep (from the Optuna mirror)."""
        sweeps = _sweeps()
        for name, params, history, state, infra in previous:
            summary = {k: v for h in history for k, v in h.items()}
            if infra:
                self.lost.add(name)
            # By alias: under pydantic 2 the model's old `allow_population_by_field_name`
            # is not honoured, so `history=` / `summary_metrics=` would be dropped silently.
            self.runs.append(sweeps.SweepRun(name=name, config={k: {"value": v} for k, v in params.items()},
                                             sampledHistory=list(history), summaryMetrics=summary,
                                             state=State(state).wandb_state, stopped=state == "pruned"))

    def _run(self, name: str) -> Any:
        return next(r for r in self.runs if r.name == name)
