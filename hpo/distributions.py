"""A W&B spec in Optuna's terms: distributions, sampler and Hyperband pruner, shared by every engine.

The Optuna engine samples with them, Ray's OptunaSearch too, and the study every engine writes (hpo.mirror)
records each trial's params under a distribution that holds them.

W&B semantics are kept where Optuna can express them exactly; a distribution it
cannot express fails before anything runs, naming the backends that can.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.errors import UsageError
from hpo.spec import Param, Spec, hyperband, sweeps_pkg

# Distributions Optuna has no form for (normal family, q-log, beta, weighted choice): sampled as a
# uniform variable `NAME~u` that W&B's own inverse CDF (sweeps' HyperParameter.ppf) maps to the value.
MAPPED = ("normal", "q_normal", "log_normal", "q_log_normal", "q_log_uniform", "q_log_uniform_values",
          "categorical_w_probabilities", "beta", "q_beta")
LATENT = "~u"
EPS = 1e-12  # the inverse CDF of 0 or 1 is infinite for unbounded laws


@dataclass(frozen=True)
class Mapped:
    """A W&B parameter that Optuna samples through a uniform variable and W&B's own ppf."""

    param: Param

    @property
    def latent(self) -> str:
        return self.param.name + LATENT

    def value(self, u: float) -> Any:
        out = _wandb_law(self.param.name, json.dumps(dict(self.param.config), sort_keys=True)).ppf(
            min(max(float(u), EPS), 1 - EPS))
        out = out.item() if hasattr(out, "item") else out
        return int(out) if isinstance(out, float) and isinstance(self.param.config.get("q"), int) else out

    def recorded(self, value: Any) -> BaseDistribution:
        """A distribution that holds the value the trainer got, to record it as the param `NAME`."""
        if self.param.distribution == "categorical_w_probabilities":
            return CategoricalDistribution([encode(v) for v in self.param.config["values"]])
        return range_for(self.param, value)


CHOICE_TYPES = (type(None), bool, int, float, str)


def encode(value: Any) -> Any:
    """A choice as Optuna can hold it: itself, or its JSON text for a list or a mapping (`[32, 32]`)."""
    return value if isinstance(value, CHOICE_TYPES) else json.dumps(value)


@dataclass(frozen=True)
class Encoded:
    """A categorical (or constant) with list or mapping choices: Optuna holds their JSON text."""

    param: Param
    dist: CategoricalDistribution

    @property
    def choices(self) -> tuple[Any, ...]:
        return self.dist.choices

    def decode(self, choice: Any) -> Any:
        values = [self.param.config["value"]] if self.param.distribution == "constant" else self.param.config["values"]
        return next(v for v in values if encode(v) == choice)


@functools.lru_cache(maxsize=256)
def _wandb_law(name: str, config_json: str) -> Any:
    """W&B's HyperParameter for a parameter (its ppf is W&B's own inverse CDF)."""
    config = json.loads(config_json)
    if config.get("distribution") == "categorical_w_probabilities":
        config.pop("distribution")  # sweeps infers it from values + probabilities
    return sweeps_pkg.sweeps().params.HyperParameter(name, config)


def to_optuna(p: Param) -> BaseDistribution:
    """One W&B parameter as the Optuna distribution with the same support."""
    c, d = p.config, p.distribution
    if d in MAPPED:
        raise ValueError(f"parameters.{p.name}: {d} has no Optuna distribution; see optuna_form")
    if d in ("constant", "categorical"):
        choices = [c["value"]] if d == "constant" else list(c["values"])
        return CategoricalDistribution([encode(v) for v in choices])
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


def optuna_form(p: Param) -> BaseDistribution | Mapped | Encoded:
    """Optuna's own distribution where it has one with W&B's law, else a Mapped uniform variable."""
    if p.distribution in MAPPED:
        return Mapped(p)
    dist = to_optuna(p)
    values = p.config.get("values", [p.config.get("value")])
    if isinstance(dist, CategoricalDistribution) and any(not isinstance(v, CHOICE_TYPES) for v in values):
        return Encoded(p, dist)
    return dist


def encoded_grid(spec: Spec) -> list[dict[str, Any]]:
    """The grid's points with their choices as Optuna holds them (what a finished trial's params are)."""
    return [{k: encode(v) for k, v in point.items()} for point in spec.grid()]


def distributions(spec: Spec) -> dict[str, BaseDistribution | Mapped | Encoded]:
    """Every parameter's Optuna form (constants are one-choice categoricals)."""
    return {p.name: optuna_form(p) for p in spec.params}


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution | Mapped | Encoded) -> Any:
    """Ask the trial for one value through Optuna's public suggest API.

    A Mapped parameter is suggested as its uniform `NAME~u`; the value it maps to is recorded
    as the param `NAME` too, so Optuna, the dashboard and MLflow show what the trainer got.
    """
    if isinstance(dist, Mapped):
        value = dist.value(trial.suggest_float(dist.latent, 0.0, 1.0))
        recorded = dist.recorded(value)
        trial.storage.set_trial_param(trial._trial_id, name, recorded.to_internal_repr(encode(value)),  # noqa: SLF001
                                      recorded)
        return value
    if isinstance(dist, Encoded):
        return dist.decode(trial.suggest_categorical(name, dist.choices))
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def sampler(spec: Spec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """bayes -> TPE, random -> Random, grid -> Grid over the values."""
    if spec.method == "grid":
        return optuna.samplers.GridSampler(
            {p.name: [encode(v) for v in p.grid_values()] for p in spec.params}, seed=seed
        )
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running in parallel count as bad guesses, so parallel workers spread out.
    # multivariate=False (Optuna 4's default; Optuna 5's is True): on 6 LCBench tasks and Hartmann-6, 20 seeds,
    # independent TPE reached a lower regret (normalised, 100 % of the budget: 0.149 vs 0.177 with 1 worker,
    # 0.159 vs 0.250 with 4) and was never worse than W&B's own bayes + hyperband (bench/RESULTS.md).
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=False)


PRUNERS = ("sha", "hyperband")  # --optuna-pruner; the first is the default


def pruner(spec: Spec, kind: str = PRUNERS[0]) -> optuna.pruners.BasePruner:
    """early_terminate hyperband -> SuccessiveHalvingPruner (W&B's one ladder of stop points from
    min_iter by eta; "sha") or Optuna's bracketed HyperbandPruner ("hyperband"); none -> no pruning."""
    if spec.hyperband is None:
        return optuna.pruners.NopPruner()
    low, top, eta = hyperband.resources(spec)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=top, reduction_factor=eta)
    if kind != "sha":
        raise UsageError(f"--optuna-pruner: {kind!r} is not one of {', '.join(PRUNERS)}")
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=eta, min_early_stopping_rate=0)


def check(spec: Spec) -> list[str]:
    """What Optuna cannot run in this spec, one line per parameter."""
    problems = []
    for p in spec.params:
        try:
            optuna_form(p)
        except UsageError as exc:
            problems.append(str(exc))
    return problems


def schedule_lines(spec: Spec, kind: str = PRUNERS[0]) -> tuple[list[int], list[str]]:
    """The rungs of the pruner that `pruner(spec, kind)` builds, how to say them, and the other choice."""
    rungs, lines = (_hyperband_lines if kind == "hyperband" else _sha_lines)(spec)
    other = "hyperband" if kind == "sha" else "sha"
    alt = (_hyperband_lines if other == "hyperband" else _sha_lines)(spec)[1][0].removeprefix("Optuna").strip()
    return rungs, [*lines, f"        (--optuna-pruner {other}: {alt})"]


def _sha_lines(spec: Spec) -> tuple[list[int], list[str]]:
    pr = pruner(spec, "sha")
    low, top, eta = hyperband.resources(spec)
    cap = top if isinstance(top, int) else 1001  # no last epoch known: W&B's bands up to 1000
    rungs = [low * eta**k for k in range(64) if low * eta**k < cap]
    head = (f"Optuna  SuccessiveHalvingPruner(min_resource={pr._min_resource}, "  # noqa: SLF001
            f"reduction_factor={pr._reduction_factor}, min_early_stopping_rate=0)")  # noqa: SLF001
    return rungs, [f"{head}: W&B's one ladder; keeps the top 1/{eta} of the trials that reached each of the "
                   f"steps {rungs}" + ("" if isinstance(top, int) else " (and on, until a trial stops reporting)")]


def _hyperband_lines(spec: Spec) -> tuple[list[int], list[str]]:
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


def distribution_for(spec: Spec, name: str, value: Any) -> BaseDistribution:
    """An Optuna distribution that contains `value` for a spec parameter (any W&B distribution)."""
    value = encode(value)
    try:
        dist = to_optuna(spec.param(name))
        if dist._contains(dist.to_internal_repr(value)):  # noqa: SLF001
            return dist
    except Exception:  # noqa: BLE001 - normal, q_log... : describe the value's own range below
        pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return CategoricalDistribution([value])
    try:
        p = spec.param(name)
    except StopIteration:
        return CategoricalDistribution([value])
    return range_for(p, value)


def range_for(p: Any, value: int | float) -> BaseDistribution:
    """A numeric distribution over the bulk of a parameter's law that holds `value` (for display)."""
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
