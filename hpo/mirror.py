"""Trials that ran on Ray or W&B, written into the sweep's Optuna study as they run.

A trial appears RUNNING when it starts (so `hpo status` and optuna-dashboard show it),
gets its per-step values as they are reported, and ends with its value and state. Its
params carry Optuna distributions that contain them, whatever the W&B distribution.
Only the controller writes the mirror.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from hpo import keys
from hpo.distributions import distribution_for, encode
from hpo.spec import Spec
from hpo.trial import Outcome, State


NO_METRIC = "_runtime"  # a sweep without a metric: a trial's value is its run time in seconds, as W&B's `_runtime`


def runtime_of(store: optuna.storages.BaseStorage, trial_id: int) -> float:
    """A no-metric trial's value (Optuna's own tools, `best_trial` and optuna-dashboard, need every COMPLETE
    trial to hold one): the seconds since it started, a measured figure rather than a made-up constant."""
    import datetime

    started = store.get_trial(trial_id).datetime_start
    return round((datetime.datetime.now() - started).total_seconds(), 3) if started else 0.0


def start_trial(study: optuna.Study, spec: Spec, params: Mapping[str, Any], user_attrs: Mapping[str, Any]) -> int:
    """A RUNNING trial with the params the engine chose; returns its storage id."""
    template = optuna.trial.create_trial(
        params={k: encode(v) for k, v in params.items()},
        distributions={k: distribution_for(spec, k, v) for k, v in params.items()},
        state=TrialState.RUNNING, user_attrs=dict(user_attrs))
    return study._storage.create_new_trial(study._study_id, template_trial=template)  # noqa: SLF001


def report(study: optuna.Study, trial_id: int, step: int, value: float) -> None:
    if math.isfinite(value):
        study._storage.set_trial_intermediate_value(trial_id, int(step), float(value))  # noqa: SLF001


def finish_trial(study: optuna.Study, trial_id: int, outcome: Outcome, user_attrs: Mapping[str, Any]) -> None:
    """Its outcome's tags as user attrs, then its end state (and value when complete)."""
    store = study._storage  # noqa: SLF001
    attrs = {**user_attrs, **{k: v for k, v in outcome.tags().items() if k != keys.STATE}}
    for key, value in attrs.items():
        store.set_trial_user_attr(trial_id, key, value)
    values = [float(outcome.value)] if outcome.state == State.COMPLETE and outcome.value is not None else None
    if outcome.state == State.COMPLETE and outcome.value is None and study.metric_names == [NO_METRIC]:
        values = [runtime_of(store, trial_id)]  # the sweep has no metric (run_trainer fails a trial that never reports one)
    if outcome.state == State.COMPLETE and outcome.values:  # a multi-objective trial
        values = list(outcome.values)
    if values is not None and len(values) != len(study.directions):  # a study must never hold that trial
        values, outcome = None, Outcome(State.FAILED, reason="no metric", error="not every objective reported")
    try:
        store.set_trial_state_values(trial_id, state=outcome.state.optuna_state, values=values)
    except RuntimeError:  # already finished (e.g. failed as an orphan meanwhile)
        pass
