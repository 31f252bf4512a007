"""Load and validate a W&B-format sweep.yaml into a Spec.

Validation uses W&B's own JSON schema (shipped by the `sweeps` package) plus the
semantic checks the schema cannot express. Every problem is reported as
`path.to.field: what is wrong`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping

from hpo.errors import SpecError
from hpo.spec.yamlsafe import load_file, load_text, one_line, read_file
from hpo.spec.model import DISCRETE, Hyperband, Param, Spec
from hpo.spec.schema import DEFINITIONS, check_parameter, check_top_level, wandb_schema

MAX_GRID_POINTS = 1_000_000


def load(path: str | Path, space: str | Path | None = None, text: str | None = None) -> Spec:
    """Read a sweep file (and optionally a `parameters` block from `space`) and validate it; `text`: the
    file's text, already read (`read_file`) by a caller that keeps it."""
    label = one_line(Path(path).name)
    raw = load_text(read_file(path, label) if text is None else text, label)
    if not isinstance(raw, dict):
        raise SpecError([f"{label}: must be a mapping of keys (method, parameters, ...), not {_kind(raw)}"])
    if space is not None:
        space_label = one_line(Path(space).name)
        block = load_file(space, label=space_label)
        if isinstance(block, dict) and "parameters" in block:
            block = block["parameters"]
        if not isinstance(block, dict):
            what = "a mapping of parameters (or hold a parameters block)"
            raise SpecError([f"{space_label}: must be {what}, not {_kind(block)}"])
        raw = {**raw, "parameters": block}
    return from_dict(raw)


def _kind(value: Any) -> str:
    if value is None:
        return "an empty document"
    return {list: "a list", str: "text"}.get(type(value), f"a {type(value).__name__}")


def from_dict(raw: Any) -> Spec:
    """Validate a sweep config already parsed into Python objects."""
    if not isinstance(raw, dict):
        raise SpecError(["sweep: the file must be a mapping of keys to values"])
    raw = copy.deepcopy(raw)
    problems = _plain_data("", raw)
    problems += check_top_level(raw)
    params: list[Param] = []
    if isinstance(raw.get("parameters"), dict):
        _flatten(raw["parameters"], "", params, problems)
        problems += _name_clashes(params)
    problems += _semantic_checks(raw, params)
    if problems:
        # one line per problem, in order; a key with a newline in it must not break the line
        raise SpecError(list(dict.fromkeys(one_line(p) for p in problems)))
    metric = raw.get("metric") or {}
    objectives = tuple((m["name"], m["goal"]) for m in raw.get("metrics") or ())
    if objectives:  # the first objective stands in where one metric is shown (progress, curves)
        metric = {"name": objectives[0][0], "goal": objectives[0][1]}
    return Spec(
        raw=raw,
        name=raw.get("name"),
        method=raw["method"],
        metric=metric.get("name"),
        goal=metric.get("goal", "minimize"),
        params=tuple(params),
        hyperband=_hyperband(raw.get("early_terminate")),
        run_cap=raw.get("run_cap"),
        objectives=objectives,
    )


def _plain_data(path: str, value: Any) -> list[str]:
    """Problems with values JSON (and so W&B) cannot carry."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if not isinstance(k, str):
                out.append(f"{path + '.' if path else ''}{k}: keys must be text; put it in quotes")
            out += _plain_data(f"{path}.{k}" if path else str(k), v)
        return out
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _plain_data(f"{path}[{i}]", v)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return []
    return [f"{path or 'sweep'}: {value!s} is a {type(value).__name__}, not a JSON value; put it in quotes"]


def _flatten(block: dict, prefix: str, out: list[Param], problems: list[str]) -> None:
    for key, value in block.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "parameters" in value and "distribution" not in value:
            _flatten_block(name, value, out, problems)
            continue
        found = check_parameter(f"parameters.{name}", value)
        if isinstance(found, str):
            out.append(Param(name, found, fill_defaults(found, value), literal="." in str(key)))
        else:
            problems.extend(found)


def _flatten_block(name: str, value: dict, out: list[Param], problems: list[str]) -> None:
    """A nested `{parameters: {...}}` block: W&B hands the run a nested dict."""
    path = f"parameters.{name}"
    for extra in [k for k in value if k != "parameters"]:
        problems.append(f"{path}.{extra}: unknown key; a nested block holds only parameters")
    inner = value["parameters"]
    if not isinstance(inner, dict) or not inner:
        problems.append(f"{path}.parameters: must define at least one parameter")
        return
    bad = check_parameter(path, {"value": 0})  # the block's own name must be a valid name
    if isinstance(bad, list):
        problems.extend(bad)
        return
    _flatten(inner, name + ".", out, problems)


def _name_clashes(params: list[Param]) -> list[str]:
    names = [p.name for p in params]
    out = [f"parameters.{dup}: defined twice (once nested, once dotted)"
           for dup in sorted({n for n in names if names.count(n) > 1})]
    taken = set(names)
    for n in (p.name for p in params if not p.literal):  # a literal `a.b` is a key of its own beside `a`
        parts = n.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in taken:
                out.append(f"parameters.{n}: clashes with parameter {'.'.join(parts[:i])!r}, "
                           "which cannot also be a nested block")
                break
    return out


def fill_defaults(dist: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """The parameter as W&B's controller fills it: the distribution named, schema defaults set."""
    schema = wandb_schema()["definitions"][DEFINITIONS[dist]]
    props = schema.get("properties", {})
    filled = {"distribution": dist, **value}
    for key, prop in props.items():
        if key != "distribution" and "default" in prop:
            filled.setdefault(key, prop["default"])
    if dist == "int_uniform":  # 1.0 is an integer to JSON schema; range() needs an int
        filled["min"], filled["max"] = int(filled["min"]), int(filled["max"])
    return filled


def _metrics_checks(raw: dict, metrics: Any) -> list[str]:
    """`metrics:` (several objectives): a list of at least two distinct {name, goal}, without `metric:`, and
    without early termination (Optuna's pruners and Ray's schedulers stop trials on one metric)."""
    if not isinstance(metrics, list):
        return []  # the schema says what is wrong
    problems = []
    if raw.get("metric") is not None:
        problems.append("metrics: give either metric: (one objective) or metrics: (several), not both")
    if len(metrics) < 2:
        problems.append(f"metrics: needs at least two metrics (got {len(metrics)}); for one, use metric:")
    names = [m.get("name") for m in metrics if isinstance(m, dict)]
    for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        problems.append(f"metrics: {name!r} is listed twice")
    if raw.get("early_terminate"):
        problems.append("early_terminate: cannot stop trials of a multi-objective sweep (metrics:): a pruner "
                        "ranks trials on one metric; remove early_terminate")
    return problems


def _semantic_checks(raw: dict, params: list[Param]) -> list[str]:
    problems = []
    method = raw.get("method")
    metric = raw.get("metric") if isinstance(raw.get("metric"), dict) else {}
    metrics = raw.get("metrics")
    if metrics is not None:
        problems += _metrics_checks(raw, metrics)
    elif method == "custom":
        problems.append("method: 'custom' needs W&B's cloud controller; use bayes, random or grid "
                        "(or a metrics: list, which hpo optimises together)")
    if (method == "bayes" or raw.get("early_terminate")) and not metric.get("name") and metrics is None:
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
            size = math.prod(p.grid_count() for p in params)
            if size > MAX_GRID_POINTS:
                problems.append(f"parameters: the grid has {size:,} points; hpo runs at most {MAX_GRID_POINTS:,}")
            for p in params:
                if p.grid_count() == 0:
                    problems.append(f"parameters.{p.name}: no multiple of q={p.config['q']} lies in "
                                    f"[{p.config['min']}, {p.config['max']}]")
    problems += _hyperband_checks(raw.get("early_terminate"))
    return problems


def _hyperband_checks(block: Any) -> list[str]:
    if not isinstance(block, dict):
        return []
    if not all(type(block.get(k, 3)) in (int, float) for k in ("max_iter", "s", "eta")):
        return []  # the schema has reported it
    if block.get("eta", 3) < 2 or block.get("s", 1) < 1:
        return []
    hb = _hyperband(block)
    if hb.max_iter is not None and hb.s is not None and not hb.rungs():
        given = f"max_iter {hb.max_iter} with eta {hb.eta} and s {hb.s}"
        return [f"early_terminate: {given} gives no stop points (W&B rejects it); raise max_iter or lower eta"]
    return []


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
