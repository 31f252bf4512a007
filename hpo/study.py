"""The sweep's Optuna study and its MLflow parent run: opened before any worker starts,
closed with a summary after the last one stops. Shared by every backend (Ray and
W&B trials are mirrored into the same study so optuna-dashboard shows them)."""

from __future__ import annotations

import json
import os
from datetime import datetime
import socket
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import space, storage
from hpo.errors import UsageError
from hpo.report import git_sha
from hpo.sweep import Sweep
from hpo.tracking import Tracker


@dataclass(frozen=True)
class Result:
    """How a sweep ended."""

    study: str
    counts: storage.Counts
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    parent_run_id: str
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def open_study(sw: Sweep, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the study, or load it to resume; the direction must not change."""
    store = storage.open_storage(sw.storage)  # first: an unreachable database writes nothing
    sw.dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=sw.name, storage=store, direction=sw.spec.direction,
        sampler=sampler, pruner=space.pruner(sw.spec) if sw.backend == "optuna" else None,
        load_if_exists=True,
    )
    if study.direction.name.lower() != sw.spec.direction:
        raise UsageError(f"metric.goal: study {sw.name!r} already exists with goal {study.direction.name.lower()}")
    return study


def open_parent(sw: Sweep, study: optuna.Study) -> tuple[Tracker, str, str]:
    """The MLflow experiment and parent run (reopened on resume); recorded in the study."""
    tracker = Tracker(sw.tracking_uri)
    exp = tracker.experiment(sw.name, artifact_dir=sw.dir / "artifacts")
    tags = {"hpo.backend": sw.backend, "hpo.study": sw.name, "hpo.storage": storage.mask(sw.storage),
            "hpo.controller": f"{socket.gethostname()}:{os.getpid()}", "hpo.budget": str(sw.budget)}
    params = {"method": sw.spec.method, "metric": sw.spec.metric or "", "goal": sw.spec.goal,
              "backend": sw.backend, "slots": len(sw.slots)}
    parent = tracker.start_parent(exp, sw.name, params, tags, resume_id=study.user_attrs.get("hpo.parent_run_id"))
    attrs = {
        "hpo.spec": json.dumps(sw.spec.raw), "hpo.experiment_id": exp,
        "hpo.tracking_uri": sw.tracking_uri if storage.mask(sw.tracking_uri) == sw.tracking_uri else "",
        "hpo.git_sha": git_sha() or "", "hpo.trainer": sw.trainer or "", "hpo.backend": sw.backend,
        "hpo.budget": sw.budget,
        "hpo.parent_run_id": parent,  # last: a joining `hpo worker` waits for it, then reads the rest
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return tracker, exp, parent


UNCLAIMED_GRACE_S = 120


def is_local_orphan(t: FrozenTrial, live_pids: set[int]) -> bool:
    """A RUNNING trial on this host whose worker process is gone."""
    if t.state != TrialState.RUNNING:
        return False
    host, pid = t.user_attrs.get("hpo.host"), t.user_attrs.get("hpo.pid")
    if host is None or pid is None:
        # Just taken by a worker (here or elsewhere) that has not said who it is yet.
        started = t.datetime_start
        return started is not None and (datetime.now() - started).total_seconds() > UNCLAIMED_GRACE_S
    if host != socket.gethostname():
        return False
    return pid not in live_pids and not _alive(pid)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study: optuna.Study, tracker: Tracker, live_pids: set[int], why: str, detail: str = "") -> int:
    """FAIL every local RUNNING trial whose worker is gone, and its MLflow child."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_local_orphan(t, live_pids):
            fail_trial(study, tracker, t, why, detail)
            n += 1
    return n


def fail_trial(study: optuna.Study, tracker: Tracker, t: FrozenTrial, why: str, detail: str = "") -> None:
    if detail:
        study._storage.set_trial_user_attr(t._trial_id, "hpo.error", detail)  # noqa: SLF001
    storage.fail_trial(study, t._trial_id, why)  # noqa: SLF001
    run_id = t.user_attrs.get("hpo.mlflow_run_id")
    if run_id:
        state = "interrupted" if why == "interrupted" else "failed"
        tracker.end_child(run_id, state, {"hpo.reason": why, **({"hpo.error": detail} if detail else {})})


def summarize(sw: Sweep, study: optuna.Study, parent: str, interrupted: bool) -> Result:
    trials = study.get_trials(deepcopy=False)
    best = storage.best_trial(trials, sw.spec.direction)
    # Ray and W&B trials keep their own number (the MLflow child's hpo.trial tag) in the mirror.
    extra = {"best_run_id": best.user_attrs.get("hpo.mlflow_run_id"),
             "best_trial_tag": str(best.user_attrs.get("hpo.trial", best.number))} if best else {}
    return Result(sw.name, storage.count(trials), best.value if best else None,
                  dict(best.params) if best else {}, best.number if best else None, parent, interrupted, extra)


def close_parent(sw: Sweep, tracker: Tracker, exp: str, result: Result, failed: bool = False) -> None:
    """Best value and params, counts, sweep.yaml as an artifact, and the end status."""
    tracker.end_running_children(exp, result.parent_run_id, "interrupted" if result.interrupted else "worker died")
    c = result.counts
    metrics = {"trials_complete": c.complete, "trials_pruned": c.pruned, "trials_failed": c.failed,
               "trials_retried": c.retried}
    tags = {"hpo.state": "failed" if failed else "interrupted" if result.interrupted else "finished"}
    if result.best_value is not None:
        metrics[f"best_{sw.spec.metric or 'value'}"] = result.best_value
        tags["hpo.best_trial"] = result.extra.get("best_trial_tag", str(result.best_trial))
        if result.extra.get("best_run_id"):
            tags["hpo.best_run_id"] = result.extra["best_run_id"]
        tags.update({f"hpo.best.{k}": str(v) for k, v in result.best_params.items()})
    best = {"value": result.best_value, "trial": result.best_trial, "params": result.best_params,
            "metric": sw.spec.metric, "goal": sw.spec.goal}
    status = "FAILED" if failed else "KILLED" if result.interrupted else "FINISHED"
    tracker.finish_parent(result.parent_run_id, status, metrics, tags,
                          {"sweep.yaml": sw.sweep_text, "best.json": json.dumps(best, indent=2, default=str)})
