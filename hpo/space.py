"""Spec -> Optuna search space, sampler and Hyperband pruner.

W&B semantics are kept where Optuna can express them exactly; a distribution it
cannot express fails before anything runs, naming the backends that can.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.errors import UsageError
from hpo.spec import Param, Spec

# Distributions only Ray and W&B can sample (Optuna has no normal, no q-log, no weights).
NOT_IN_OPTUNA = {
    "normal": "ray, wandb",
    "q_normal": "ray, wandb",
    "log_normal": "ray, wandb",
    "q_log_normal": "ray, wandb",
    "q_log_uniform": "ray, wandb",
    "q_log_uniform_values": "ray, wandb",
    "categorical_w_probabilities": "ray, wandb",
    "beta": "ray, wandb",
    "q_beta": "ray, wandb",
}
CHOICE_TYPES = (type(None), bool, int, float, str)


def to_optuna(p: Param) -> BaseDistribution:
    """One W&B parameter as the Optuna distribution with the same support."""
    c, d = p.config, p.distribution
    if d in NOT_IN_OPTUNA:
        raise UsageError(
            f"parameters.{p.name}: Optuna cannot sample {d}; use --backend {NOT_IN_OPTUNA[d].replace(', ', ' or --backend ')}"
        )
    if d in ("constant", "categorical"):
        choices = [c["value"]] if d == "constant" else list(c["values"])
        bad = [v for v in choices if not isinstance(v, CHOICE_TYPES)]
        if bad:
            raise UsageError(
                f"parameters.{p.name}: Optuna choices must be numbers, strings, booleans or null, not {bad[0]!r}"
            )
        return CategoricalDistribution(choices)
    if d == "int_uniform":
        return IntDistribution(c["min"], c["max"])
    if d == "uniform":
        return FloatDistribution(float(c["min"]), float(c["max"]))
    if d in ("log_uniform_values", "inv_log_uniform_values"):
        # 1/x log-uniform on [a, b] is the same law as x log-uniform on [a, b].
        return FloatDistribution(float(c["min"]), float(c["max"]), log=True)
    if d == "log_uniform":  # min/max are natural-log exponents in W&B
        return FloatDistribution(math.exp(c["min"]), math.exp(c["max"]), log=True)
    if d == "inv_log_uniform":  # x = exp(-u), u ~ U(min, max)
        return FloatDistribution(math.exp(-c["max"]), math.exp(-c["min"]), log=True)
    if d == "q_uniform":
        return _q_uniform(p)
    raise UsageError(f"parameters.{p.name}: unknown distribution {d}")


def _q_uniform(p: Param) -> BaseDistribution:
    # W&B rounds to multiples of q: the support is the multiples of q inside [min, max].
    c, q = p.config, p.config["q"]
    lo, hi = math.ceil(c["min"] / q - 1e-9), math.floor(c["max"] / q + 1e-9)
    if isinstance(q, int):
        return IntDistribution(lo * q, hi * q, step=q)
    return FloatDistribution(lo * q, lo * q + (hi - lo) * q, step=q)


def distributions(spec: Spec) -> dict[str, BaseDistribution]:
    """Every parameter's Optuna distribution (constants are one-choice categoricals)."""
    return {p.name: to_optuna(p) for p in spec.params}


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for one value through Optuna's public suggest API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def sampler(spec: Spec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """bayes -> TPE, random -> Random, grid -> Grid over the values."""
    if spec.method == "grid":
        return optuna.samplers.GridSampler(
            {p.name: p.grid_values() for p in spec.params}, seed=seed
        )
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def max_epochs(spec: Spec) -> int | None:
    """The most epochs a trial can run, read from an `epochs` parameter if there is one."""
    try:
        p = spec.param("epochs")
    except StopIteration:
        return None
    if p.distribution == "constant":
        return int(p.config["value"])
    if p.distribution in ("categorical", "int_uniform", "q_uniform"):
        return int(max(p.grid_values()))
    return None


def hyperband_resources(spec: Spec) -> tuple[int, int | str, int]:
    """(min_resource, max_resource, reduction_factor) for Optuna's HyperbandPruner."""
    hb = spec.hyperband
    assert hb is not None
    eta = int(hb.eta)
    top = hb.max_iter or max_epochs(spec) or "auto"
    if hb.min_iter is not None:
        low = hb.min_iter
    else:
        low = max(1, int(round(hb.max_iter / eta ** int(hb.s))))
    return low, top, eta


def pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """early_terminate hyperband -> HyperbandPruner; none -> no pruning."""
    if spec.hyperband is None:
        return optuna.pruners.NopPruner()
    low, top, eta = hyperband_resources(spec)
    return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=top, reduction_factor=eta)


def check(spec: Spec) -> None:
    """Fail before anything runs if Optuna cannot run this spec."""
    distributions(spec)
