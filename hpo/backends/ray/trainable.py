"""The Tune function trainable: a trial where Ray runs it, under its own MLflow child run.

Each epoch goes to MLflow, then to `tune.report` (Ray's scheduler and searcher need
it). A trainer failure ends the trial normally, its child FAILED: it is data, and Ray
must not retry it (Ray retries only a trial whose worker died).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from hpo import keys, trainer_ref
from hpo.tracking import Tracker
from hpo.trial import Pruned, TrialRun

RUN_ID, CUDA, STEP = "hpo_run_id", "hpo_cuda_visible_devices", "hpo_step"


@dataclass(frozen=True)
class TrialContext:
    """What a trial needs to open its child run; plain data, shipped to every node."""

    tracking_uri: str
    experiment_id: str
    parent_id: str
    study: str
    metric: str | None
    max_t: int
    scheduler: str
    trainer: str | None = None
    git_sha: str = "none"
    literal: tuple[str, ...] = ()  # the spec's literal dotted names
    encoded: tuple[str, ...] = ()  # parameters whose list or mapping values come as JSON text
    objectives: tuple[str, ...] = ()  # a multi-objective sweep's metrics


class _Done(Exception):
    """Ray stopped the trial at or after max_t: it is complete."""


_trackers: dict[str, Tracker] = {}


def plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and type(value).__module__ == "numpy" else value


def trial_number(trial_id: str) -> int | str:
    """Random and grid trials' ids end in a counter (`a1b2c_00007`); a searcher's are opaque."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if "_" in trial_id and tail.isdigit() else trial_id


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    trial_id = tune.get_context().get_trial_id()
    tracker = _trackers.setdefault(ctx.tracking_uri, Tracker(ctx.tracking_uri))
    trial_run = TrialRun(tracker, ctx.experiment_id, ctx.parent_id, "ray", ctx.study,
                         f"{socket.gethostname()}-{os.getpid()}", ctx.trainer,
                         {keys.GIT_SHA: ctx.git_sha, keys.RAY_TRIAL_ID: trial_id,
                          keys.NODE: ray.get_runtime_context().get_node_id()}, frozenset(ctx.literal))
    trainer = trainer_ref.load(ctx.trainer)
    run = {"id": "", "reports": 0, "stopped": False}

    def to_tune(step: int, metrics: dict[str, float]) -> None:
        if ctx.objectives and not any(n in metrics for n in ctx.objectives):
            return  # a multi-objective sweep: any of its metrics is news
        if ctx.metric and ctx.metric not in metrics and not ctx.objectives:
            return  # NaN or not reported: Ray's scheduler and searcher need the metric
        run["reports"] += 1
        try:
            tune.report({**metrics, RUN_ID: run["id"], STEP: step,
                         CUDA: os.environ.get("CUDA_VISIBLE_DEVICES", "")})
        except SystemExit:  # Ray stopped the trial: its scheduler, or the sweep ends
            run["stopped"] = True
            if run["reports"] >= ctx.max_t:
                raise _Done from None
            raise Pruned(f"stopped by {ctx.scheduler} after {run['reports']} reports") from None

    def until_done(cfg: dict[str, Any], report) -> Any:
        try:
            return trainer(cfg, report)
        except _Done:
            return None

    params = {k: json.loads(v) if k in ctx.encoded else plain(v) for k, v in config.items()}
    trial_run.run(trial_number(trial_id), params, until_done, ctx.metric,
                  on_start=lambda rid: run.update(id=rid), on_report=to_tune, objectives=ctx.objectives)
    if run["stopped"]:
        raise SystemExit(0)  # how Ray expects a stopped trial's thread to end (reuse the actor)
