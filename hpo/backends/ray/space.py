"""Spec -> Ray Tune search space, search algorithm and scheduler.

Every W&B distribution has a Ray sampler with W&B's law: Ray's own domains
where one exists (randn, qloguniform, ...), `sample_from` for the rest
(log-normal, weighted categorical, beta). bayes runs Ray's OptunaSearch (TPE)
with a define-by-run space: TPE models what Optuna can express, and the other
parameters are drawn from their Ray domain for each trial.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from ray import tune
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    HyperBandScheduler,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, Searcher

from hpo import distributions as space
from hpo.spec import Param, Spec, hyperband


def _lognormal(mu: float, sigma: float, q: float | None, _spec: Any = None) -> float:
    x = float(np.exp(np.random.normal(mu, sigma)))
    return x if q is None else round(x / q) * q


def _beta(a: float, b: float, q: float | None, _spec: Any = None) -> float:
    x = float(np.random.beta(a, b))
    return x if q is None else round(x / q) * q


def _weighted(values: list[Any], probabilities: list[float], _spec: Any = None) -> Any:
    return values[int(np.random.choice(len(values), p=probabilities))]


def _quantized(p: Param, lo: float, hi: float, log: bool) -> Any:
    q = p.config["q"]
    if all(isinstance(v, int) for v in (q, p.config["min"], p.config["max"])):  # W&B hands ints then
        return (tune.qlograndint if log else tune.qrandint)(int(lo), int(hi), q)
    return (tune.qloguniform if log else tune.quniform)(lo, hi, q)


def to_ray(p: Param) -> Any:
    """One W&B parameter as a Ray Tune domain (a plain value for a constant)."""
    c, d = p.config, p.distribution
    q = c.get("q")
    if d == "constant":
        return space.encode(c["value"])
    if d == "categorical":
        return tune.choice([space.encode(v) for v in c["values"]])
    if d == "categorical_w_probabilities":
        return tune.sample_from(functools.partial(_weighted, list(c["values"]), list(c["probabilities"])))
    if d == "int_uniform":
        return tune.randint(c["min"], c["max"] + 1)  # Ray's upper bound is exclusive
    if d == "uniform":
        return tune.uniform(c["min"], c["max"])
    if d == "q_uniform":
        return _quantized(p, c["min"], c["max"], log=False)
    if d in ("log_uniform_values", "inv_log_uniform_values"):  # 1/x log-uniform == x log-uniform
        return tune.loguniform(c["min"], c["max"])
    if d == "log_uniform":  # min/max are natural-log exponents in W&B
        return tune.loguniform(math.exp(c["min"]), math.exp(c["max"]))
    if d == "inv_log_uniform":  # x = exp(-u), u ~ U(min, max)
        return tune.loguniform(math.exp(-c["max"]), math.exp(-c["min"]))
    if d == "q_log_uniform":
        return _quantized(p, math.exp(c["min"]), math.exp(c["max"]), log=True)
    if d == "q_log_uniform_values":
        return _quantized(p, c["min"], c["max"], log=True)
    if d == "normal":
        return tune.randn(c.get("mu", 0.0), c.get("sigma", 1.0))
    if d == "q_normal":
        return tune.qrandn(c.get("mu", 0.0), c.get("sigma", 1.0), q)
    if d in ("log_normal", "q_log_normal"):
        return tune.sample_from(functools.partial(_lognormal, c.get("mu", 0.0), c.get("sigma", 1.0), q))
    if d in ("beta", "q_beta"):
        return tune.sample_from(functools.partial(_beta, c.get("a", 1.0), c.get("b", 1.0), q))
    raise ValueError(f"parameters.{p.name}: unknown distribution {d}")


def encoded_names(spec: Spec) -> list[str]:
    """Parameters whose choices travel through Ray as JSON text (lists, mappings): Ray would unpack them."""
    return [p.name for p in spec.params if isinstance(space.optuna_form(p), space.Encoded)]


def param_space(spec: Spec) -> dict[str, Any]:
    """Flat `{dotted name: domain}`; the trial unflattens it for the trainer."""
    return {p.name: to_ray(p) for p in spec.params}


def _sample(domain: Any) -> Any:
    if isinstance(domain, tune.search.sample.Function):
        return domain.func(None)
    return domain.sample() if isinstance(domain, tune.search.sample.Domain) else domain


class _DefineByRun:
    """OptunaSearch's space: suggest what Optuna can express, draw the rest from Ray's domain."""

    def __init__(self, spec: Spec):
        self.optuna: dict[str, Any] = {}
        self.ray: dict[str, Any] = {}
        for p in spec.params:
            try:
                self.optuna[p.name] = space.to_optuna(p)
            except Exception:  # noqa: BLE001 - normal, q_log..., weights, objects: sampled by Ray
                self.ray[p.name] = to_ray(p)

    def __call__(self, trial) -> dict[str, Any]:
        for name, dist in self.optuna.items():
            space.suggest(trial, name, dist)
        return {name: _sample(domain) for name, domain in self.ray.items()}


def search(spec: Spec, budget: int, concurrency: int, seed: int | None = None,
           grid_points: list[dict[str, Any]] | None = None) -> tuple[Searcher | BasicVariantGenerator, dict[str, Any], int]:
    """(search algorithm, Tuner param_space, num_samples) for `budget` more trials of the sweep's method.

    `grid_points`: the grid points still to run (a resumed grid), in W&B's order.
    """
    if spec.method == "grid" and grid_points is not None:
        points = grid_points[:budget]
        return (BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency), param_space(spec),
                len(points))
    if spec.method in ("bayes", "custom"):  # custom: a metrics: sweep (multi-objective TPE)
        from ray.tune.search.optuna import OptunaSearch

        sampler = space.sampler(spec, seed)  # TPE with constant_liar: trials run concurrently
        modes = ["max" if d == "maximize" else "min" for d in spec.directions]
        metric, mode = (spec.metric_names, modes) if spec.multi else (spec.metric, modes[0])
        return OptunaSearch(space=_DefineByRun(spec), metric=metric, mode=mode, sampler=sampler), {}, budget
    if spec.method == "grid" and budget >= spec.grid_size():
        grid = {p.name: tune.grid_search([space.encode(v) for v in p.grid_values()]) for p in spec.params}
        return BasicVariantGenerator(max_concurrent=concurrency), grid, 1
    if spec.method == "grid":  # a capped grid: its first `budget` points in W&B's order
        points = space.encoded_grid(spec)[:budget]
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=concurrency), param_space(spec), budget
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency), param_space(spec), budget


def max_t(spec: Spec) -> int:
    """The iteration at which a trial counts as complete (W&B max_iter, else the epochs)."""
    if spec.hyperband is None:
        return hyperband.max_epochs(spec) or 10**9
    top = hyperband.resources(spec)[1]
    return int(top) if top != "auto" else 100


def scheduler(spec: Spec, kind: str = "asha") -> TrialScheduler | None:
    """early_terminate hyperband -> ASHA (or Ray's synchronous HyperBand); none -> FIFO.

    A trial that reaches max_t is not stopped for it (stop_last_trials=False), as W&B
    does not cut a run at max_iter; one stopped at or after max_t counts as complete.
    """
    if spec.hyperband is None:
        return None
    low, _, eta = hyperband.resources(spec)
    top = max(max_t(spec), low)
    if kind == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=top, reduction_factor=eta,
                                  stop_last_trials=False)
    return AsyncHyperBandScheduler(time_attr="training_iteration", grace_period=low, max_t=top,
                                   reduction_factor=eta, brackets=int(spec.hyperband.s or 1),
                                   stop_last_trials=False)


def rungs(spec: Spec, kind: str = "asha") -> list[int]:
    """The iterations at which `scheduler(spec, kind)` may stop a trial, read from its own brackets."""
    sched = scheduler(spec, kind)
    if sched is None:
        return []
    if isinstance(sched, AsyncHyperBandScheduler):
        return sorted({int(m) for b in sched._brackets for m, _ in b._rungs if m < max_t(spec)})  # noqa: SLF001
    low, _, eta = hyperband.resources(spec)
    out, r = [], low
    while r < max_t(spec):
        out.append(int(r))
        r *= eta
    return out
