"""Read-only views of a sweep's study: status, best trial, trial table."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import keys, mirror, storage
from hpo.errors import UsageError


def best(study: optuna.Study, metric: str, trials: list[FrozenTrial] | None = None) -> dict[str, Any]:
    """`hpo best`: the best trial, or a metrics: sweep's Pareto front; from `trials` when the caller has read them."""
    if len(study.directions) > 1:  # several objectives: the Pareto front
        names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
        return {"study": study.study_name, "metrics": names,
                "goals": [d.name.lower() for d in study.directions], "pareto": storage.pareto(study, names)}
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    t = storage.best_trial(trials, study.direction.name.lower())
    if t is None or study.metric_names == [mirror.NO_METRIC]:  # no metric: each value is a run time, none is best
        return {"study": study.study_name, "best_trial": None}
    return {"study": study.study_name, "best_trial": t.number, metric: t.value, "params": storage.trainer_params(t),
            "mlflow_run_id": t.user_attrs.get(keys.MLFLOW_RUN_ID)}


def status(study: optuna.Study, metric: str, trials: list[FrozenTrial] | None = None,
           counts: storage.Counts | None = None) -> dict[str, Any]:
    """`hpo status --json`: the counts, the budget, the best trial (or front) and what runs now; from `trials`
    and their `counts` when the caller has read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    c = counts or storage.count(trials)
    running = [{"trial": t.number, "worker": t.user_attrs.get(keys.WORKER),
                "gpu": t.user_attrs.get(keys.CUDA_VISIBLE_DEVICES) or None,
                "step": max(t.intermediate_values) if t.intermediate_values else None}
               for t in trials if t.state == TrialState.RUNNING]
    return {"study": study.study_name, "budget": study.user_attrs.get(keys.BUDGET), "finished": c.finished,
            **{k: getattr(c, k) for k in ("complete", "pruned", "failed", "retried", "interrupted", "running")},
            "queued": c.waiting, "best": best(study, metric, trials), "running_trials": running}


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
