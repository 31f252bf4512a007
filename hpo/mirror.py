"""Mirror trials that ran on Ray or W&B into the sweep's Optuna study.

Every finished trial is added with its params and their distributions, its
per-step intermediate values, its final value and its state, so `hpo dashboard`
shows a Ray or W&B sweep like an Optuna one.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo.report import Outcome
from hpo.spec import Spec

STATE = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED,
         "failed": TrialState.FAIL, "interrupted": TrialState.FAIL}


def distribution_for(spec: Spec, name: str, value: Any) -> BaseDistribution:
    """An Optuna distribution that contains `value` for a spec parameter (any W&B distribution)."""
    from hpo import space

    try:
        dist = space.to_optuna(spec.param(name))
        if dist._contains(dist.to_internal_repr(value)):  # noqa: SLF001
            return dist
    except Exception:  # noqa: BLE001 - normal, q_log... : describe the value's own range below
        pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return CategoricalDistribution([value])
    p = spec.param(name)
    c = p.config
    lo, hi = c.get("min", value), c.get("max", value)
    if "normal" in p.distribution:  # show the bulk of the law (mu +- 4 sigma), not one point
        mu, sigma = c.get("mu", 0.0), c.get("sigma", 1.0)
        lo, hi = mu - 4 * sigma, mu + 4 * sigma
        if "log" in p.distribution:
            lo, hi = math.exp(lo), math.exp(hi)
    elif p.distribution == "q_log_uniform":
        lo, hi = math.exp(lo), math.exp(hi)
    lo, hi = min(value, lo), max(value, hi)
    if isinstance(value, int):
        return IntDistribution(int(lo), int(hi))
    if lo == hi:
        return FloatDistribution(lo, lo)
    return FloatDistribution(float(lo), float(hi))


def add_trial(study: optuna.Study, spec: Spec, params: Mapping[str, Any], outcome: Outcome,
              intermediate: Mapping[int, float], user_attrs: Mapping[str, Any]) -> int:
    """Add one finished trial to the study; return its Optuna trial number."""
    state = STATE[outcome.state]
    values = {int(k): float(v) for k, v in intermediate.items() if math.isfinite(v)}
    value = outcome.value
    attrs = {**user_attrs, **{k: v for k, v in outcome.tags().items() if k != "hpo.state"}}
    trial = optuna.trial.create_trial(
        params=dict(params),
        distributions={k: distribution_for(spec, k, v) for k, v in params.items()},
        value=value if state == TrialState.COMPLETE else None,
        intermediate_values=values,
        state=state,
        user_attrs=attrs,
    )
    study.add_trial(trial)
    return len(study.get_trials(deepcopy=False)) - 1
