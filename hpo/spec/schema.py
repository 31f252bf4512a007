"""W&B's sweep JSON schema (from the `sweeps` package) turned into one-line problems."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions

# W&B distribution name -> the schema definition that describes it.
DEFINITIONS = {
    "constant": "param_single_value",
    "categorical": "param_categorical",
    "categorical_w_probabilities": "param_categorical_w_probabilities",
    "int_uniform": "param_int_uniform",
    "uniform": "param_uniform",
    "log_uniform": "param_loguniform",
    "log_uniform_values": "param_loguniform_v2",
    "inv_log_uniform": "param_inv_loguniform",
    "inv_log_uniform_values": "param_inv_loguniform_v2",
    "q_uniform": "param_quniform",
    "q_log_uniform": "param_qloguniform",
    "q_log_uniform_values": "param_qloguniform_v2",
    "normal": "param_normal",
    "q_normal": "param_qnormal",
    "log_normal": "param_lognormal",
    "q_log_normal": "param_qlognormal",
    "beta": "param_beta",
    "q_beta": "param_qbeta",
}
RANGED = {"int_uniform", "uniform", "log_uniform", "log_uniform_values", "inv_log_uniform",
          "inv_log_uniform_values", "q_uniform", "q_log_uniform", "q_log_uniform_values"}
POSITIVE_BOUNDS = {"log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values"}


@functools.lru_cache(maxsize=1)
def wandb_schema() -> dict:
    """The sweep-config JSON schema W&B's controller validates with.

    Found without importing `sweeps` (which pulls in scipy). hpo adds the keys W&B's
    server accepts that this schema version lacks: `run_cap`, and W&B Launch's `job`,
    `image_uri` and `scheduler` (hpo does not use them; see api.prepare for `job`).
    """
    spec = importlib.util.find_spec("sweeps")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'sweeps' package is missing: pip install sweeps")
    path = Path(list(spec.submodule_search_locations)[0]) / "config" / "schema.json"
    schema = json.loads(path.read_text())
    props = schema["properties"]
    props.setdefault("run_cap", {"type": "integer", "minimum": 1, "description": "Maximum number of runs"})
    props.setdefault("job", {"type": "string", "description": "W&B Launch job"})
    props.setdefault("image_uri", {"type": "string", "description": "W&B Launch image"})
    props.setdefault("scheduler", {"type": "object", "description": "W&B Launch sweep scheduler"})
    # sweeps 0.3.0's multi-objective form: a list of at least two {name, goal}, instead of `metric:`.
    props.setdefault("metrics", {"type": "array", "description": "Metrics to optimize together (Pareto front)",
                                 "items": {"type": "object", "required": ["name", "goal"],
                                           "additionalProperties": False,
                                           "properties": {"name": {"type": "string"},
                                                          "goal": {"type": "string",
                                                                   "enum": ["minimize", "maximize"]}}}})
    return schema


def _validator(definition: str | None = None) -> jsonschema.Draft7Validator:
    schema = wandb_schema()
    if definition is not None:
        schema = {**schema["definitions"][definition], "definitions": schema["definitions"]}
    return jsonschema.Draft7Validator(schema)


def _line(prefix: str, error: jsonschema.ValidationError) -> str:
    parts = [prefix] if prefix else []
    parts += [f"[{p}]" if isinstance(p, int) else str(p) for p in error.absolute_path]
    path = ".".join(parts).replace(".[", "[") or "sweep"
    inst = error.instance
    if error.validator == "type" and isinstance(inst, str):
        try:
            float(inst)
            return f"{path}: {inst!r} is text (in quotes); write it without quotes for a number"
        except ValueError:
            pass
    if error.validator == "additionalProperties" and isinstance(inst, dict):
        extra = [k for k in inst if k not in error.schema.get("properties", {})]
        where = f"{path}." if path != "sweep" else ""
        return f"{where}{extra[0] if extra else '?'}: unknown key"
    if error.validator == "required" and isinstance(inst, dict):
        missing = [k for k in error.validator_value if k not in inst]
        where = f"{path}." if path != "sweep" else ""
        return f"{where}{missing[0] if missing else '?'}: required"
    if error.validator in ("anyOf", "oneOf") and error.context:
        # W&B lists some distributions as several schemas (uniform with or without `distribution`);
        # the branch that only misses a key is rarely the one the user meant.
        specific = [e for e in error.context if e.validator != "required"] or error.context
        best = jsonschema.exceptions.best_match(specific)
        if path.startswith("early_terminate") and (
            best.validator in ("anyOf", "required") or not isinstance(inst, dict)
        ):
            return "early_terminate: hyperband needs min_iter, or max_iter and s (and type: hyperband)"
        return _line(prefix, best)
    if error.validator == "exclusiveMinimum":
        return f"{path}: must be > {error.validator_value} (got {inst})"
    return f"{path}: {error.message}"


def check_top_level(raw: dict) -> list[str]:
    """Schema problems outside `parameters` (parameters are checked one by one)."""
    params = raw.get("parameters")
    own_check = isinstance(params, dict) or ("parameters" in raw and params is None)  # reported below
    problems = []
    for err in sorted(_validator().iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        if err.absolute_path and err.absolute_path[0] == "parameters" and own_check:
            continue
        if not err.absolute_path and err.validator == "required":
            problems.append(f"{err.message.split(' ')[0].strip(repr(chr(39)))}: required")
            continue
        problems.append(_line("", err))
    if isinstance(raw.get("parameters"), dict) and not raw["parameters"]:
        problems.append("parameters: must define at least one parameter")
    if "parameters" in raw and raw["parameters"] is None:
        problems.append("parameters: empty; define at least one parameter")
    hyperband = _check_hyperband(raw.get("early_terminate"))
    fields = {p.split(":", 1)[0] for p in hyperband}  # hpo's line replaces the schema's for a field
    return [p for p in problems if p.split(":", 1)[0] not in fields] + hyperband


def _check_hyperband(block: Any) -> list[str]:
    if not isinstance(block, dict):
        return []
    out = []
    eta = block.get("eta", 3)
    if isinstance(eta, (int, float)) and eta < 2:
        out.append(f"early_terminate.eta: must be at least 2 (got {eta})")
    lo, hi = block.get("min_iter"), block.get("max_iter")
    if isinstance(hi, int) and hi < 1:
        out.append(f"early_terminate.max_iter: must be at least 1 (got {hi})")
    if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
        out.append(f"early_terminate.min_iter: must be less than max_iter ({lo} >= {hi})")
    s = block.get("s")
    if s is not None and isinstance(s, (int, float)) and s < 1:
        out.append(f"early_terminate.s: must be at least 1 (got {s})")
    elif isinstance(s, float) and not s.is_integer():
        out.append(f"early_terminate.s: must be a whole number of stop points (got {s})")
    return out


def infer_distribution(value: dict) -> str | None:
    """The distribution W&B assumes when a parameter does not name one."""
    if "distribution" in value:
        d = value["distribution"]
        return d if isinstance(d, str) else None
    if "value" in value:
        return "constant"
    if "values" in value:
        return "categorical_w_probabilities" if "probabilities" in value else "categorical"
    if "min" in value and "max" in value:
        ints = all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # W&B's pattern; used with fullmatch (no trailing newline)
NUMBER_KEYS = ("min", "max", "q", "mu", "sigma", "a", "b")


def check_parameter(path: str, value: Any) -> str | list[str]:
    """The parameter's distribution name, or the list of its problems."""
    name = path.split(".", 1)[-1]  # the dotted name under `parameters.` (`a.b.0` as W&B allows)
    if not NAME.fullmatch(name) or "" in name.split("."):
        return [f"{path}: bad parameter name {name!r}; use letters, digits, _ . - (starting with a letter or _)"]
    if not isinstance(value, dict):
        return [f"{path}: must be a mapping such as {{values: [...]}} or {{min: 0, max: 1}}"]
    if "values" in value and not isinstance(value["values"], list) and "value" not in value:
        return [f"{path}.values: {value['values']!r} is not a list; did you mean value: {value['values']!r}?"]
    for key in NUMBER_KEYS:
        if isinstance(value.get(key), bool) or value.get(key, 0) is None:
            return [f"{path}.{key}: must be a number (got {value[key]!r})"]
        if isinstance(value.get(key), str):
            try:
                float(value[key])
            except ValueError:
                return [f"{path}.{key}: must be a number (got {value[key]!r})"]
            return [f"{path}.{key}: {value[key]!r} is text (in quotes); write it without quotes for a number"]
    if "distribution" in value and not isinstance(value["distribution"], str):
        return [f"{path}.distribution: must be a name such as uniform (got {value['distribution']!r})"]
    if value.get("distribution") == "categorical" and "probabilities" in value:
        why = "categorical takes no probabilities (W&B rejects it)"
        return [f"{path}.distribution: {why}; write categorical_w_probabilities or leave distribution out"]
    dist = infer_distribution(value)
    if dist is None:
        return [f"{path}: needs value, values, min and max, or a distribution"]
    if dist not in DEFINITIONS:
        return [f"{path}.distribution: unknown distribution {dist!r}; one of {', '.join(DEFINITIONS)}"]
    errors = sorted(_validator(DEFINITIONS[dist]).iter_errors(value), key=lambda e: list(e.absolute_path))
    problems = [_line(path, e) for e in errors]
    if problems:
        return [f"{p} for {dist}" if p.endswith(": unknown key") else p for p in problems]
    problems = _semantic(path, dist, value)
    return problems or dist


def _semantic(path: str, dist: str, v: dict) -> list[str]:
    out = []
    if dist in RANGED:
        lo, hi = v["min"], v["max"]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            out.append(f"{path}: min and max must be finite numbers")
        elif lo >= hi:
            out.append(f"{path}.min: must be less than max ({lo} >= {hi})")
        if dist in POSITIVE_BOUNDS and lo <= 0:
            out.append(f"{path}.min: must be > 0 for {dist} (got {lo})")
    if "q" in v and not v["q"] > 0:
        out.append(f"{path}.q: must be > 0 (got {v['q']})")
    if "sigma" in v and not v["sigma"] > 0:
        out.append(f"{path}.sigma: must be > 0 (got {v['sigma']})")
    if dist == "categorical_w_probabilities":
        probs = v["probabilities"]
        if len(probs) != len(v["values"]):
            out.append(f"{path}.probabilities: {len(probs)} probabilities for {len(v['values'])} values")
        elif abs(sum(probs) - 1.0) > 1e-6:
            out.append(f"{path}.probabilities: must sum to 1 (sum is {sum(probs):g})")
    if dist in ("categorical", "categorical_w_probabilities"):
        if not v["values"]:
            out.append(f"{path}.values: must not be empty")
    return out
