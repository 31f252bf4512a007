"""A validated sweep: its parameters in one canonical form each, its Hyperband block, nothing engine-specific."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

# The distributions a parameter can have that a grid can visit, in W&B's names.
DISCRETE = ("constant", "categorical", "int_uniform", "q_uniform")

@dataclass(frozen=True)
class Param:
    """One flattened parameter: a dotted name, a W&B distribution and its filled config."""

    name: str
    distribution: str
    config: Mapping[str, Any] = field(default_factory=dict)
    literal: bool = False  # a dotted name written as one key (`optimizer.lr: {...}`): a key of its own in config

    def grid_count(self) -> int:
        """How many points grid_values() has, without building them (a grid may be huge)."""
        c = self.config
        if self.distribution == "constant":
            return 1
        if self.distribution == "categorical":
            return len(c["values"])
        if self.distribution == "int_uniform":
            return max(0, c["max"] - c["min"] + 1)
        if self.distribution == "q_uniform":
            lo, hi = q_range(c)
            return max(0, hi - lo + 1)
        raise ValueError(f"{self.name}: {self.distribution} has no grid")

    def grid_values(self) -> list[Any]:
        """The points a grid search visits, in W&B's order."""
        c = self.config
        if self.distribution == "constant":
            return [c["value"]]
        if self.distribution == "categorical":
            return list(c["values"])
        if self.distribution == "int_uniform":
            return list(range(c["min"], c["max"] + 1))
        if self.distribution == "q_uniform":
            # The multiples of q inside [min, max]: the same support as space.to_optuna.
            lo, hi = q_range(c)
            q = c["q"]
            return [k * q for k in range(lo, hi + 1)]
        raise ValueError(f"{self.name}: {self.distribution} has no grid")


def q_range(config: Mapping[str, Any]) -> tuple[int, int]:
    """(first, last) k such that k * q lies in [min, max] (a float slack of 1e-9 steps)."""
    q = config["q"]
    return math.ceil(config["min"] / q - 1e-9), math.floor(config["max"] / q + 1e-9)


@dataclass(frozen=True)
class Hyperband:
    """W&B's early_terminate block: one ladder of stop points."""

    min_iter: int | None
    max_iter: int | None
    s: int | None
    eta: float
    strict: bool = False

    def rungs(self, limit: int = 1000) -> list[int]:
        """W&B's bands: the history indexes at which its controller may stop a run."""
        if self.max_iter is not None and self.s is not None:
            bands, band = [], float(self.max_iter)
            for _ in range(int(self.s)):
                band /= self.eta
                if band < 1:
                    break
                bands.append(int(band))
            return sorted(bands)
        bands, band = [], self.min_iter or 1  # int * int stays exact, as in W&B
        while band <= limit and len(bands) < 100:
            bands.append(int(band))
            band *= self.eta
        return bands


@dataclass(frozen=True)
class Spec:
    """A validated sweep: everything the backends need, nothing engine-specific."""

    raw: Mapping[str, Any]
    name: str | None
    method: str
    metric: str | None
    goal: str
    params: tuple[Param, ...]
    hyperband: Hyperband | None = None
    run_cap: int | None = None
    objectives: tuple[tuple[str, str], ...] = ()  # `metrics:` (name, goal) pairs; () for one `metric:`

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"

    @property
    def multi(self) -> bool:
        """Several objectives (`metrics:`): trials have a Pareto front, not one best."""
        return len(self.objectives) > 1

    @property
    def metric_names(self) -> list[str]:
        return [n for n, _ in self.objectives] if self.multi else [self.metric] if self.metric else []

    @property
    def directions(self) -> list[str]:
        return [g for _, g in self.objectives] if self.multi else [self.direction]

    @property
    def literal_names(self) -> frozenset[str]:
        """Dotted names written as one key: wandb.config keeps them as keys, not as nested dicts."""
        return frozenset(p.name for p in self.params if p.literal and "." in p.name)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def grid_size(self) -> int:
        return math.prod(p.grid_count() for p in self.params)

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, the last parameter varying fastest."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            points = [{**pt, p.name: v} for pt in points for v in p.grid_values()]
        return points


def changes(old: Spec, new: Spec) -> list[str]:
    """What differs between two specs in what a study searches (not its name, budget or command)."""
    out = []
    if old.objectives != new.objectives:
        out.append(f"metrics: {[list(o) for o in old.objectives]} -> {[list(o) for o in new.objectives]}")
    for key in ("method", "metric", "goal"):
        if getattr(old, key) != getattr(new, key):
            out.append(f"{'metric.' + key if key != 'method' else key}: {getattr(old, key)!r} -> {getattr(new, key)!r}")
    was = {p.name: (p.distribution, dict(p.config)) for p in old.params}
    now = {p.name: (p.distribution, dict(p.config)) for p in new.params}
    for name in sorted(was.keys() | now.keys()):
        if name not in now:
            out.append(f"parameters.{name}: removed")
        elif name not in was:
            out.append(f"parameters.{name}: added")
        elif was[name] != now[name]:
            out.append(f"parameters.{name}: changed")
    if old.hyperband != new.hyperband:
        out.append("early_terminate: changed")
    return out


def unflatten(flat: Mapping[str, Any], literal: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`: the nested config W&B hands a run; `literal` names stay keys."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in literal:
            out[key] = value
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
