"""Read-only views of an existing sweep: status and best trial."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import keys, mirror, storage
from hpo.errors import UsageError
from hpo.api import prepare
from hpo.plan import Settings


def open_existing(s: Settings) -> tuple[optuna.Study, str]:
    """The sweep's study, without creating anything."""
    sw = prepare(replace(s, inspect_only=True))
    storage.require_existing(sw.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=sw.name, storage=storage.open_storage(sw.storage))
    except KeyError:
        raise UsageError(f"--study: no study named {sw.name!r} in {storage.mask(sw.storage)}") from None
    return study, sw.spec.metric or "value"


def best(study: optuna.Study, metric: str) -> dict[str, Any]:
    if len(study.directions) > 1:  # several objectives: the Pareto front
        names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
        return {"study": study.study_name, "metrics": names,
                "goals": [d.name.lower() for d in study.directions], "pareto": storage.pareto(study, names)}
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values is not None]
    if not done or study.metric_names == [mirror.NO_METRIC]:  # no metric: each value is a run time, none is best
        return {"study": study.study_name, "best_trial": None}
    t = study.best_trial
    return {"study": study.study_name, "best_trial": t.number, metric: t.value, "params": storage.trainer_params(t),
            "mlflow_run_id": t.user_attrs.get(keys.MLFLOW_RUN_ID)}


def status(study: optuna.Study, metric: str) -> dict[str, Any]:
    """`hpo status --json`: the counts, the budget, the best trial (or front) and what runs now."""
    trials = study.get_trials(deepcopy=False)
    c = storage.count(trials)
    running = [{"trial": t.number, "worker": t.user_attrs.get(keys.WORKER),
                "gpu": t.user_attrs.get(keys.CUDA_VISIBLE_DEVICES) or None,
                "step": max(t.intermediate_values) if t.intermediate_values else None}
               for t in trials if t.state == TrialState.RUNNING]
    return {"study": study.study_name, "budget": study.user_attrs.get(keys.BUDGET), "finished": c.finished,
            **{k: getattr(c, k) for k in ("complete", "pruned", "failed", "retried", "interrupted", "running")},
            "queued": c.waiting, "best": best(study, metric), "running_trials": running}


def params_text(params: dict[str, Any]) -> str:
    """`lr=0.003 hidden=64`: parameters for a person."""
    return " ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items())


def status_text(study: optuna.Study, metric: str) -> str:
    s = status(study, metric)
    done, budget = s["finished"], s["budget"]
    of = f"{done}/{budget} finished" if budget is None or done <= int(budget) else f"{done} finished (budget {budget})"
    lost = "".join(f", {s[k]} {k}" for k in ("retried", "interrupted") if s[k])
    lines = [f"{s['study']}: {of} - {s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed{lost}; "
             f"{s['running']} running, {s['queued']} queued"]
    b = s["best"]
    if "pareto" in b:
        lines.append(f"Pareto front: {len(b['pareto'])} trial(s) on {', '.join(b['metrics'])} (hpo best shows it)")
    elif b.get("best_trial") is not None:
        lines.append(f"best: trial {b['best_trial']} {metric}={b[metric]:.6g}  {params_text(b['params'])}")
    for r in s["running_trials"]:
        lines.append(f"running: trial {r['trial']} on {r['worker'] or '?'} (gpu {r['gpu'] or 'none'}), "
                     f"step {'-' if r['step'] is None else r['step']}")
    return "\n".join(lines)


def trial_rows(study: optuna.Study, metric: str) -> list[dict[str, Any]]:
    """`hpo trials`: one row per trial, one column per parameter and objective (as Ray's trial table and W&B's
    run table), in trial order."""
    names = study.metric_names or ([metric] if len(study.directions) == 1 else
                                   [f"objective_{i}" for i in range(len(study.directions))])
    if names == [mirror.NO_METRIC]:
        names = ["run_seconds"]
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys(k for t in trials for k in storage.trainer_params(t)))
    rows = []
    for t in trials:
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_start and t.datetime_complete else None)
        values, given = t.values or [None] * len(names), storage.trainer_params(t)
        rows.append({"trial": t.number, "state": t.state.name.lower(), **dict(zip(names, values)),
                     "step": max(t.intermediate_values) if t.intermediate_values else None,
                     **{p: given.get(p) for p in params},
                     "worker": t.user_attrs.get(keys.WORKER), "seconds": seconds,
                     "reason": t.user_attrs.get(keys.REASON), "mlflow_run_id": t.user_attrs.get(keys.MLFLOW_RUN_ID)})
    return rows


def sort_rows(rows: list[dict[str, Any]], column: str, goal: str | None) -> list[dict[str, Any]]:
    """By `column`, empty cells last; the metric best first (its goal), any other column ascending."""
    if rows and column not in rows[0]:
        raise UsageError(f"--sort: no column {column!r}; the columns are {', '.join(rows[0])}")
    desc = goal == "maximize"
    filled = [r for r in rows if r.get(column) is not None]
    key = (lambda r: r[column]) if all(isinstance(r[column], (int, float)) for r in filled) else (lambda r: str(r[column]))
    return sorted(filled, key=key, reverse=desc) + [r for r in rows if r.get(column) is None]


def rows_text(rows: list[dict[str, Any]]) -> str:
    """A plain table, columns padded to their widest cell; floats to 4 significant digits."""
    if not rows:
        return "(no trials)"

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    head = list(rows[0])
    cells = [head] + [[cell(r[k]) for k in head] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def best_model(study: optuna.Study, run_id: str | None, tracking_uri: str | None = None) -> dict[str, Any]:
    """`hpo best --model`: the best trial's logged model URI and the registered versions made from it."""
    import os

    from hpo import registry
    from hpo.tracking import Tracker

    uri = tracking_uri or study.user_attrs.get(keys.TRACKING_URI) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UsageError("--tracking-uri: required: the sweep's tracking URI holds a password, so hpo did not "
                         "store it in the study")
    if not run_id:
        return {"model_uri": None, "registered": []}
    return registry.lookup(Tracker(uri), study.user_attrs.get(keys.EXPERIMENT_ID, "0"), run_id)
