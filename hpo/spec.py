"""Load, validate and flatten a W&B-format sweep.yaml.

Validation uses W&B's own JSON schema (shipped by the `sweeps` package) plus the
semantic checks the schema cannot express. Every problem is reported as
`path.to.field: what is wrong`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hpo import yamlsafe
from hpo.errors import SpecError
from hpo.schema import check_parameter, check_top_level

MAX_GRID_POINTS = 1_000_000

# The distributions a parameter can have, in W&B's names.
DISCRETE = ("constant", "categorical", "int_uniform", "q_uniform")


@dataclass(frozen=True)
class Param:
    """One flattened parameter: a dotted name, a W&B distribution and its filled config."""

    name: str
    distribution: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.config.get(key)

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
            lo, hi, q = c["min"], c["max"], c["q"]
            n = int(math.floor((hi - lo) / q + 1e-9))
            vals = [round((lo + i * q) / q) * q for i in range(n + 1)]
            return [int(v) for v in vals] if isinstance(q, int) else vals
        raise ValueError(f"{self.name}: {self.distribution} has no grid")


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
        bands, band = [], float(self.min_iter or 1)
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

    @property
    def direction(self) -> str:
        return "maximize" if self.goal == "maximize" else "minimize"

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.params)

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point, the last parameter varying fastest."""
        points: list[dict[str, Any]] = [{}]
        for p in self.params:
            points = [{**pt, p.name: v} for pt in points for v in p.grid_values()]
        return points


def load(path: str | Path, space: str | Path | None = None) -> Spec:
    """Read a sweep file (and optionally a `parameters` block from `space`) and validate it."""
    raw = yamlsafe.load_file(path, label=Path(path).name)
    if space is not None:
        block = yamlsafe.load_file(space, label=Path(space).name)
        raw = {**raw, "parameters": block.get("parameters", block)}
    return from_dict(raw)


def from_dict(raw: Any) -> Spec:
    """Validate a sweep config already parsed into Python objects."""
    if not isinstance(raw, dict):
        raise SpecError(["sweep: the file must be a mapping of keys to values"])
    raw = copy.deepcopy(raw)
    problems = check_top_level(raw)
    params: list[Param] = []
    if isinstance(raw.get("parameters"), dict):
        _flatten(raw["parameters"], "", params, problems)
    problems += _semantic_checks(raw, params)
    if problems:
        raise SpecError(problems)
    metric = raw.get("metric") or {}
    return Spec(
        raw=raw,
        name=raw.get("name"),
        method=raw["method"],
        metric=metric.get("name"),
        goal=metric.get("goal", "minimize"),
        params=tuple(params),
        hyperband=_hyperband(raw.get("early_terminate")),
        run_cap=raw.get("run_cap"),
    )


def _flatten(block: dict, prefix: str, out: list[Param], problems: list[str]) -> None:
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and set(value) == {"parameters"} and isinstance(value["parameters"], dict):
            _flatten(value["parameters"], name + ".", out, problems)
            continue
        found = check_parameter(f"parameters.{name}", value)
        if isinstance(found, str):
            out.append(Param(name, found, value))
        else:
            problems.extend(found)
    names = [p.name for p in out]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"parameters.{dup}: defined twice (once nested, once dotted)")


def _semantic_checks(raw: dict, params: list[Param]) -> list[str]:
    problems = []
    method = raw.get("method")
    if method == "custom":
        problems.append("method: 'custom' needs W&B's cloud controller; use bayes, random or grid")
    if (method == "bayes" or raw.get("early_terminate")) and not (raw.get("metric") or {}).get("name"):
        why = "method bayes" if method == "bayes" else "early_terminate"
        problems.append(f"metric.name: required with {why}")
    if method == "grid" and params:
        bad = [p for p in params if p.distribution not in DISCRETE]
        for p in bad:
            problems.append(
                f"parameters.{p.name}: grid search needs value, values, int_uniform or q_uniform, "
                f"not {p.distribution}"
            )
        if not bad:
            size = math.prod(len(p.grid_values()) for p in params)
            if size > MAX_GRID_POINTS:
                problems.append(f"parameters: the grid has {size:,} points; hpo runs at most {MAX_GRID_POINTS:,}")
    return problems


def _hyperband(block: Any) -> Hyperband | None:
    if not block:
        return None
    return Hyperband(
        min_iter=block.get("min_iter"),
        max_iter=block.get("max_iter"),
        s=block.get("s"),
        eta=block.get("eta", 3),
        strict=bool(block.get("strict", False)),
    )


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}`: the nested config W&B hands a run."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
