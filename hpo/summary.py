"""How a sweep ended, from its trials: the Result, and the parent run closed with it."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from hpo import keys, storage
from hpo.plan import Plan, Result
from hpo.tracking import Tracker


def tail(text: str, limit: int) -> str:
    """An error's last non-empty lines, up to `limit` characters: where a message says why (an exception's
    own line, argparse's `error:` line after its usage) is at its end."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    out = ""
    for line in reversed(lines):
        joined = f"{line} | {out}" if out else line
        if len(joined) > limit:
            return out or line[-limit:]
        out = joined
    return out


def failures(trials: list[FrozenTrial]) -> dict[str, int]:
    """"reason error_type: error" -> how many failed trials ended that way."""
    out: Counter[str] = Counter()
    for t in trials:
        if t.state == TrialState.FAIL:
            what = " ".join(str(t.user_attrs.get(k, "")) for k in (keys.REASON, keys.ERROR_TYPE)).strip()
            error = tail(str(t.user_attrs.get(keys.ERROR, "")), 160)
            out[f"{what or 'failed'}{': ' + error if error else ''}"] += 1
    return dict(out)


def summarize(plan: Plan, trials: list[FrozenTrial], parent_run_id: str, interrupted: bool,
              aborted: str | None) -> Result:
    best = storage.best_trial(trials, plan.spec.direction) if plan.spec.metric_names else None  # no metric: no best
    if best is None:
        return Result(plan.name, storage.count(trials), None, {}, None, parent_run_id, None, interrupted, aborted,
                      failures(trials))
    return Result(plan.name, storage.count(trials), best.value, storage.trainer_params(best),
                  best.user_attrs.get(keys.TRIAL, best.number), parent_run_id,
                  best.user_attrs.get(keys.MLFLOW_RUN_ID), interrupted, aborted, failures(trials))


def command(name: str) -> str:
    """`mlflow` / `hpo` as the user can paste it: the bare name when this environment's copy is the one on PATH,
    else its path (`.venv/bin/mlflow` after `make sweep`, whose venv is not active in the user's shell)."""
    import os
    import shutil

    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return name
    try:
        return os.path.relpath(here) if not os.path.relpath(here).startswith("..") else str(here)
    except ValueError:  # another drive (Windows)
        return str(here)


def text(plan: Plan, result: Result, seconds: float, dashboard: str) -> str:
    """The end of `hpo run` for a person: counts, best trial, and where to look next."""
    from hpo.storage import mask

    c, metric = result.counts, plan.spec.metric or "value"
    how = "interrupted" if result.interrupted else "stopped" if result.aborted else "done"
    lines = [f"{plan.name}: {how} in {seconds:.1f} s: {c.complete} complete, {c.pruned} pruned, {c.failed} failed"
             + c.lost]
    front = result.extra.get("pareto")
    if front:
        lines.append(f"Pareto front: {len(front)} trial(s)")
        lines += ["  " + line for line in pareto_table(front).splitlines()]
    if result.best_value is not None:
        lines.append(f"best {metric} {result.best_value:.6g}: trial {result.best_trial}"
                     + (f", MLflow run {result.best_run_id}" if result.best_run_id else ""))
        lines += [f"  {k} = {v}" for k, v in result.best_params.items()]
    reg = result.extra.get("registered")
    if reg:
        lines.append(f"model:     {reg['uri']} ({reg['note']}); load it with mlflow.pyfunc.load_model")
    uri, exp = plan.tracking_uri, result.extra.get("experiment_id")
    if uri.startswith(("sqlite:", "file:", "/")):
        lines.append(f"MLflow:    {command('mlflow')} ui --backend-store-uri {uri} --host 127.0.0.1")
        lines.append(f"           then http://127.0.0.1:5000/#/experiments/{exp}/runs  (the runs table)")
    else:
        lines.append(f"MLflow:    {mask(uri).rstrip('/')}/#/experiments/{exp}/runs")
    lines.append(f"dashboard: {dashboard}")
    if plan.backend == "wandb" and plan.options.offline and (plan.dir / "wandb").is_dir():
        lines.append(f"W&B:       {command('wandb')} sync {plan.dir / 'wandb'}/offline-run-*  (uploads the offline runs)")
    return "\n".join(lines)


def _tag_front(tracker: Tracker, result: Result, on: set[str]) -> None:
    """hpo.pareto=true on the front's children, false on those a resumed sweep pushed off it."""
    was = {r.info.run_id for r in tracker.children(result.extra.get("experiment_id", ""), result.parent_run_id)
           if r.data.tags.get(keys.PARETO) == "true"}
    for run_id, flag in [*((r, "true") for r in on - was), *((r, "false") for r in was - on)]:
        try:
            tracker.set_tags(run_id, {keys.PARETO: flag})
        except Exception as exc:  # noqa: BLE001 - a child deleted by hand: the parent still closes
            print(f"hpo: warning: run {run_id}: hpo.pareto not set: {type(exc).__name__}", file=sys.stderr)


def pareto_table(front: list[dict]) -> str:
    """The front as a plain table: trial, every objective, the params."""
    if not front:
        return "(no complete trial)"
    names = list(front[0]["values"])
    rows = [["trial", *names, "params"]]
    rows += [[str(f["trial"]), *(f"{f['values'][n]:.6g}" for n in names),
              " ".join(f"{k}={v}" for k, v in f["params"].items())] for f in front]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def close_parent(tracker: Tracker, plan: Plan, result: Result, artifacts: dict[str, str] | None = None) -> None:
    """Best value and params, counts, sweep.yaml and best.json as artifacts, and the end status."""
    c, metric = result.counts, plan.spec.metric or "value"
    metrics = {"trials_complete": c.complete, "trials_pruned": c.pruned, "trials_failed": c.failed,
               "trials_retried": c.retried, "trials_interrupted": c.interrupted}
    for gpu, g in result.extra.get("gpus", {}).items():  # NVML, sampled by the controller (hpo.gpumon)
        key = "".join(ch if ch.isalnum() else "_" for ch in gpu)
        metrics.update({f"gpu{key}_busy": g["busy"], f"gpu{key}_mem_used_peak_mb": g["mem_used_peak_mb"]})
    failed = not result.interrupted and result.sweep_failed
    tags = {keys.STATE: "failed" if failed else "interrupted" if result.interrupted else "finished"}
    if failed:
        tags[keys.FAILURE] = result.failure_summary()
    if result.best_value is not None:
        metrics[f"best_{metric}"] = result.best_value
        tags[keys.BEST_TRIAL] = str(result.best_trial)
        if result.best_run_id:
            tags[keys.BEST_RUN_ID] = result.best_run_id
        tags.update({f"{keys.BEST_PREFIX}{k}": str(v) for k, v in result.best_params.items()})
    reg = result.extra.get("registered")
    if reg:
        tags.update({keys.REGISTERED_MODEL: reg["name"], keys.REGISTERED_VERSION: reg["version"]})
    if result.extra.get("register_error"):
        tags[keys.REGISTER_ERROR] = result.extra["register_error"]
    best = {"value": result.best_value, "trial": result.best_trial, "run_id": result.best_run_id,
            "params": result.best_params, "metric": plan.spec.metric, "goal": plan.spec.goal,
            "registered": reg or None}
    front = result.extra.get("pareto")
    extra = {}
    if front is not None:  # a multi-objective sweep: its front, on the parent and on each Pareto child
        tags[keys.PARETO_TRIALS] = ",".join(str(f["trial"]) for f in front)[:5000]
        extra["pareto.json"] = json.dumps(front, indent=2, default=str)
        _tag_front(tracker, result, {f["run_id"] for f in front if f.get("run_id")})
    status = "FAILED" if failed else "KILLED" if result.interrupted else "FINISHED"
    tracker.finish_parent(result.parent_run_id, status, metrics, tags,
                          {"sweep.yaml": plan.sweep_text, "best.json": json.dumps(best, indent=2, default=str),
                           **extra, **(artifacts or {})})
