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
from hpo.spec import Param, Spec, hyperband

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
    # constant_liar: trials running in parallel count as bad guesses, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """early_terminate hyperband -> HyperbandPruner; none -> no pruning."""
    if spec.hyperband is None:
        return optuna.pruners.NopPruner()
    low, top, eta = hyperband.resources(spec)
    return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=top, reduction_factor=eta)


def check(spec: Spec) -> list[str]:
    """What Optuna cannot run in this spec, one line per parameter."""
    problems = []
    for p in spec.params:
        try:
            to_optuna(p)
        except UsageError as exc:
            problems.append(str(exc))
    return problems


def schedule_lines(spec: Spec) -> tuple[list[int], list[str]]:
    """The rungs of the HyperbandPruner that `pruner(spec)` builds, and how to say them."""
    low, top, eta = hyperband.resources(spec)
    head = f"Optuna  HyperbandPruner(min_resource={low}, max_resource={top!r}, reduction_factor={eta})"
    if top == "auto":
        return [], [head + ": max_resource is learned from the first finished trial."]
    n = int(math.floor(math.log(top / low, eta) + 1e-9)) + 1
    lines = [f"{head}: {n} bracket(s) of successive halving; each trial lands in one bracket "
             "(by a hash of its number)."]
    rungs: set[int] = set()
    for b in range(n):  # bracket b is a SuccessiveHalvingPruner with min_early_stopping_rate=b
        steps = [low * eta ** (b + k) for k in range(n - b) if low * eta ** (b + k) < top]
        rungs.update(steps)
        lines.append(f"        bracket {b}: keeps the top 1/{eta} at steps {steps or '(none: runs to the end)'}")
    return sorted(rungs), lines
