"""Trials in the sweep's Optuna study: the one module that writes a trial's end there, for every engine.

Ray's and W&B's trials are mirrored by the controller as they run: a trial appears RUNNING when it
starts (so `hpo status` and optuna-dashboard show it), gets its per-step values as they are reported,
and ends with its value and state; its params carry Optuna distributions that contain them, whatever
the W&B distribution. The Optuna engine's workers end their own trials through `finish_trial` too.
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


def finish_trial(study: optuna.Study, trial_id: int, outcome: Outcome, user_attrs: Mapping[str, Any],
                 live: optuna.Trial | None = None) -> None:
    """The one writer of a trial's end into Optuna, for every engine: its outcome's tags as user attrs, then
    its state and value(s). `live`: the Optuna engine's own trial, told through `study.tell` so its sampler
    sees the result too; the other engines' trials are written into the storage."""
    store = study._storage  # noqa: SLF001
    attrs = {**user_attrs, **{k: v for k, v in outcome.tags().items() if k != keys.STATE}}
    for key, value in attrs.items():
        store.set_trial_user_attr(trial_id, key, value)
    values = [float(outcome.value)] if outcome.state == State.COMPLETE and outcome.value is not None else None
    if outcome.state == State.COMPLETE and outcome.value is None and study.metric_names == [NO_METRIC]:
        values = [runtime_of(store, trial_id)]  # the sweep has no metric (run_trainer fails a trial that never reports one)
    if outcome.state == State.COMPLETE and outcome.values:  # a multi-objective trial
        values = list(outcome.values)
    if outcome.state == State.COMPLETE and (values is None or len(values) != len(study.directions)):
        values, outcome = None, Outcome(State.FAILED, reason="no metric", error="not every objective reported")
        for key, value in outcome.tags().items():  # a study must never hold a COMPLETE trial without its values
            if key != keys.STATE:
                store.set_trial_user_attr(trial_id, key, value)
    if live is not None:
        study.tell(live, values, state=outcome.state.optuna_state)
        return
    try:
        store.set_trial_state_values(trial_id, state=outcome.state.optuna_state, values=values)
    except RuntimeError:  # already finished (e.g. failed as an orphan meanwhile)
        pass
