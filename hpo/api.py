"""What the CLI and Python callers use: Settings in, a validated Plan, a Result out.

    from hpo import api
    result = api.run(api.Settings("sweep.yaml", trials=12, workers=2))

Nothing is written until `run`: `prepare` only reads and checks.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from hpo import packing
from hpo import slots as slotsmod
from hpo import spec as specmod
from hpo import redact, tracking, trainer_ref
from hpo.errors import UsageError
from hpo.plan import Options, Plan, Result, Settings  # noqa: F401 - the API's value types (api.Settings, ...)
from hpo.spec.yamlsafe import read_file

DEFAULT_BUDGET = 20


def study_name(spec: specmod.Spec, override: str | None) -> str:
    """--study as given, else the sweep's `name:` made safe for a folder (W&B takes any text there)."""
    name = override or re.sub(r"[^A-Za-z0-9_.-]+", "-", str(spec.name or "")).strip("-.")[:100] or "sweep"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", name):
        field_name = "--study" if override else "name"
        raise UsageError(f"{field_name}: {name!r} must be letters, digits, _ . - (at most 100)")
    return name


def budget(s: Settings, spec: specmod.Spec) -> int:
    """--trials, else the sweep's run_cap, else 20; a grid never runs more than its points."""
    if s.trials is not None and s.trials < 1:
        raise UsageError(f"--trials: must be at least 1 (got {s.trials})")
    asked = s.trials or spec.run_cap
    if spec.method == "grid":
        return min(asked or spec.grid_size(), spec.grid_size())
    return asked or DEFAULT_BUDGET


def _program(spec: specmod.Spec, s: Settings, sweep_dir: Path, name: str) -> str | None:
    """The sweep's own program as a trainer ref; None for hpo's built-in trainer or for nothing named."""
    from hpo import program

    raw = spec.raw
    if raw.get("job") and not (raw.get("program") or raw.get("command")):
        raise UsageError("job: a W&B Launch job runs on W&B Launch; to run the sweep here give it a program: "
                         "or command:, or pass --trainer package.module:function")
    found = program.from_sweep(raw, Path(s.sweep_file), sweep_dir, name, s.options.project,
                               missing_ok=s.inspect_only or s.options.validate_only)
    return found.ref() if found else None


def _check_models(s: Settings, spec: specmod.Spec, trainer: str | None) -> None:
    """--keep-models and --register, before anything is written."""
    from hpo import program

    keep = s.options.keep_models
    if keep is not None and keep < 0:
        raise UsageError(f"--keep-models: must be 0 or more (got {keep})")
    name = s.options.register
    if name is not None:
        from hpo import registry  # it loads Optuna: only for --register

        registry.check_name(name)
        if not spec.metric:
            raise UsageError("--register: the sweep has no metric: to rank its models; add metric: {name, goal}")
        if spec.multi:
            raise UsageError("--register: a metrics: sweep has a Pareto front, not one best model; register one "
                             "of its trials' models with mlflow.register_model")
        if keep == 0 and not (trainer or "").startswith(program.PREFIX):
            raise UsageError("--register: needs a kept model; --keep-models 0 keeps none")


def _check_builtin_settings(spec: specmod.Spec) -> None:
    """hpo's trainer takes DEFAULTS' keys only: a sweep parameter it would ignore (a typo, another trainer's
    setting) is refused here, as `python -m hpo.train` refuses an unknown flag."""
    from hpo.train_args import DEFAULTS

    for p in spec.params:
        top = p.name.split(".")[0]
        if top not in DEFAULTS:
            raise UsageError(f"parameters.{p.name}: hpo's trainer (hpo.train) has no setting {top!r}; it takes "
                             f"{', '.join(DEFAULTS)} (or pass --trainer for your own)")


def prepare(s: Settings) -> Plan:
    """Validate the sweep file and every setting; raise UsageError on the first problem."""
    from hpo.backends import base

    backend = base.get(s.backend)
    text = read_file(s.sweep_file)  # once: a pipe (`hpo run <(...)`) cannot be read again
    spec = specmod.load(s.sweep_file, s.space, text=text)
    name = study_name(spec, s.study)
    if Path(s.root).exists() and not Path(s.root).is_dir():
        raise UsageError(f"--root: {s.root} is a file, not a folder")
    if s.storage and "://" in s.storage and not redact.is_rdb(s.storage):
        raise UsageError(f"--storage: unknown scheme in {redact.mask(s.storage)}; use a file path or an RDB URL")
    # A journal file the user names holds the sweep's folder (logs, report, the default MLflow store): a sweep
    # never writes into the folder of another sweep that has the same name:.
    journal = s.storage and not redact.is_rdb(s.storage)
    sweep_dir = Path(s.storage).parent if journal else Path(s.root) / name
    store = s.storage or str(sweep_dir / "optuna.log")
    uri = s.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_uri(sweep_dir)
    trainer_ref.check(s.trainer)
    trainer = s.trainer or _program(spec, s, sweep_dir, name)
    gpus = slotsmod.parse_gpus(s.gpus)
    if s.workers is not None and gpus and s.gpus is not None:
        raise UsageError("--workers: for CPU workers; with --gpus use --workers-per-gpu")
    if s.retries < 0:
        raise UsageError(f"--retries: must be 0 or more (got {s.retries})")
    _check_models(s, spec, trainer)
    if (trainer or trainer_ref.BUILTIN) == trainer_ref.BUILTIN and (spec.raw.get("program") or spec.raw.get("command")
                                                                    or trainer):
        _check_builtin_settings(spec)
    per_gpu, cap = packing.parse(s.workers_per_gpu)
    if cap is not None and not gpus and not s.inspect_only:
        raise UsageError("--workers-per-gpu: auto packs workers onto GPUs, and there is none here; give --workers N "
                         "for CPU workers")
    if cap is not None and s.backend != "optuna":
        raise UsageError(f"--workers-per-gpu: auto packs the optuna engine's workers; with --backend {s.backend} "
                         "give a number")
    slots = slotsmod.plan(gpus, per_gpu, s.workers)
    options = replace(s.options, pack_cap=cap) if cap is not None and gpus else s.options
    plan = Plan(spec, name, sweep_dir, store, uri, budget(s, spec), tuple(slots), s.backend,
                trainer, text, s.retries, s.progress, options)
    if not s.inspect_only:
        problems = backend.check(plan)
        if problems:
            raise UsageError(problems[0])
    return plan  # no metric (random or grid, as W&B allows): trials are recorded, none is best


NOTHING_TO_RUN = ("program: the sweep names nothing to run; give it a program: or command: "
                  "(`command: [python, -m, hpo.train, ${args}]` for hpo's trainer), or pass --trainer")


def runs_what(plan: Plan) -> str | None:
    """What each trial runs, in words; None when the sweep names nothing (`hpo validate` says so, `run` refuses)."""
    if plan.trainer:
        return trainer_ref.label(plan.trainer)
    raw = plan.spec.raw
    return "hpo's trainer (hpo.train)" if raw.get("program") or raw.get("command") else None


def run(s: Settings | Plan) -> Result:
    """Run a sweep to its budget on the chosen engine; return its Result."""
    from hpo.backends import base
    from hpo.session import Session

    plan = s if isinstance(s, Plan) else prepare(s)
    if runs_what(plan) is None:
        raise UsageError(NOTHING_TO_RUN)
    return Session(plan, base.get(plan.backend)).run()
