"""Ray Tune backend: Ray places the trials, ASHA stops them early, hpo records them.

The controller starts (or joins) Ray, opens the Optuna study and the MLflow
parent, and runs a Tuner whose experiment lives in `runs/NAME/ray/` (running
the same command again restores it). Each trial opens its own MLflow child
where it runs, so it nests on a remote node too; a Tune callback in the
controller closes trials that Ray stopped and mirrors every finished trial
into the Optuna study for `hpo dashboard`.

Schedulers: ASHA (default) never pauses a trial. `--ray-scheduler hyperband`
picks Ray's synchronous HyperBandScheduler, which pauses trials at each rung
and resumes the best from a checkpoint; `train(config, report)` has no
checkpoint hook, so a resumed trial starts again from its first epoch, in a
new child run (the paused one ends KILLED, reason "paused").

On a cluster (`--ray-address auto`, or $RAY_ADDRESS) every node needs hpo and the
trainer installed, and a tracking URI it can reach (`--tracking-uri http://...`; the
default SQLite file in the sweep folder only works on one machine or a shared disk).
A trainer failure is an errored Ray trial (data: not retried on resume); Ctrl-C or
SIGTERM stops Tune cleanly and `hpo run` again restores its experiment.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from hpo.errors import HpoError, MissingDependency, UsageError

try:
    import ray
    from ray import tune
    from ray.tune.search import BasicVariantGenerator
except ImportError as exc:  # pragma: no cover - depends on the install
    raise MissingDependency("ray[tune]", "--backend ray") from exc

import optuna
from optuna.trial import TrialState

from hpo import mirror
from hpo import study as studymod
from hpo.backends import ray_space
from hpo.progress import Progress
from hpo.report import Outcome, Pruned, git_sha, load_trainer
from hpo.runner import TrialRun
from hpo.sweep import Sweep
from hpo.tracking import Tracker

EXPERIMENT = "tune"  # runs/NAME/ray/tune: the Tuner's experiment folder
RUN_ID, CUDA, STEP = "hpo_run_id", "hpo_cuda_visible_devices", "hpo_step"


# -- the trial, where Ray runs it ----------------------------------------------------------
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


class _Done(Exception):
    """Ray stopped the trial at or after max_t: it is complete."""


_trackers: dict[str, Tracker] = {}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and type(value).__module__ == "numpy" else value


def trial_number(trial_id: str) -> int | str:
    """Random and grid trials' ids end in a counter (`a1b2c_00007`); a searcher's are opaque."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if "_" in trial_id and tail.isdigit() else trial_id


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable: the trainer under a child run, each epoch to `tune.report`."""
    trial_id = tune.get_context().get_trial_id()
    tracker = _trackers.setdefault(ctx.tracking_uri, Tracker(ctx.tracking_uri))
    trial_run = TrialRun(tracker, ctx.experiment_id, ctx.parent_id, "ray", ctx.study,
                         f"{socket.gethostname()}-{os.getpid()}", ctx.trainer,
                         {"hpo.git_sha": ctx.git_sha, "hpo.ray_trial_id": trial_id})
    trainer = load_trainer(ctx.trainer)
    run = {"id": "", "reports": 0, "stopped": False}

    def to_tune(step: int, metrics: dict[str, float]) -> None:
        if ctx.metric and ctx.metric not in metrics:
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

    params = {k: _plain(v) for k, v in config.items()}
    outcome, _ = trial_run.run(trial_number(trial_id), params, until_done, ctx.metric,
                               on_start=lambda rid: run.update(id=rid), on_report=to_tune)
    if run["stopped"]:
        raise SystemExit(0)  # how Ray expects a stopped trial's thread to end (reuse the actor)
    if outcome.state == "failed":  # Ray records it as an errored trial; the sweep goes on
        raise TrialError(f"{outcome.reason}: {outcome.error_type or ''} {outcome.error or ''}".strip())


class TrialError(RuntimeError):
    """The trainer failed (error, NaN, OOM); its child run already ended FAILED."""


# -- the controller's side -----------------------------------------------------------------
@dataclass
class _Seen:
    params: dict[str, Any]
    run_ids: list[str] = field(default_factory=list)
    cuda: str = ""
    values: dict[int, float] = field(default_factory=dict)
    reports: int = 0
    stopped: bool = False
    worker: str = ""


class Session:
    """Controller state for one sweep: closes children, mirrors into Optuna, shows progress."""

    def __init__(self, sw: Sweep, study: optuna.Study, tracker: Tracker, exp: str, progress: Progress):
        self.sw, self.study, self.tracker, self.exp, self.progress = sw, study, tracker, exp, progress
        self.max_t = ray_space.max_t(sw.spec)
        self.scheduler = sw.options.get("ray_scheduler", "asha")
        self.seen: dict[str, _Seen] = {}
        self.trials = study.get_trials(deepcopy=False)
        self.mirrored = {t.user_attrs.get("hpo.ray_trial_id") for t in self.trials
                         if t.user_attrs.get("hpo.reason") != "interrupted"}
        self._shown = 0.0

    def result(self, trial, result: dict) -> None:
        s = self.seen.setdefault(trial.trial_id, _Seen({k: _plain(v) for k, v in trial.config.items()}))
        run_id = result.get(RUN_ID)
        if run_id and run_id not in s.run_ids:
            s.run_ids.append(run_id)
            s.reports = 0
        s.reports += 1
        s.stopped = bool(result.get("done"))  # Tune marks the result on which its scheduler stops a trial
        s.cuda = str(result.get(CUDA, s.cuda))
        s.worker = f"{result.get('hostname', '')}-{result.get('pid', '')}"
        metric = self.sw.spec.metric
        if metric in result and STEP in result:
            s.values[int(result[STEP])] = float(result[metric])
        self.show()

    def complete(self, trial) -> None:
        s = self.seen.get(trial.trial_id)
        if s is None:  # the trainer never reported the metric
            s = self.seen.setdefault(trial.trial_id, _Seen({k: _plain(v) for k, v in trial.config.items()}))
        value = s.values[max(s.values)] if s.values else None
        if not s.stopped or s.reports >= self.max_t:
            outcome = Outcome("complete", value)
        else:
            outcome = Outcome("pruned", value, reason=f"stopped by {self.scheduler} after {s.reports} reports")
            if s.run_ids:  # the trial may be gone before it closed its run: close it here (idempotent)
                self.tracker.end_child(s.run_ids[-1], "pruned", outcome.tags())
        self._close_paused(s)
        self._mirror(trial.trial_id, s, outcome)

    def error(self, trial) -> None:
        s = self.seen.setdefault(trial.trial_id, _Seen({k: _plain(v) for k, v in trial.config.items()}))
        runs = self.tracker.client.search_runs(
            [self.exp], f"tags.`hpo.ray_trial_id` = '{trial.trial_id}'", order_by=["attributes.start_time DESC"],
            max_results=1)
        tags = runs[0].data.tags if runs else {}
        if runs and runs[0].info.status == "RUNNING":  # the actor died under the trial
            detail = str(getattr(trial, "error_message", "") or "")[-1000:]
            self.tracker.end_child(runs[0].info.run_id, "failed", {"hpo.reason": "worker died", "hpo.error": detail})
            tags = {"hpo.reason": "worker died", "hpo.error": detail}
        if runs and runs[0].info.run_id not in s.run_ids:
            s.run_ids.append(runs[0].info.run_id)
        self._close_paused(s)
        self._mirror(trial.trial_id, s, Outcome("failed", reason=tags.get("hpo.reason", "error"),
                                                  error_type=tags.get("hpo.error_type"), error=tags.get("hpo.error")))

    def close_interrupted(self, parent: str) -> None:
        """Ctrl-C: Ray stopped its running trials, which then closed their runs as if pruned.

        A trial Ray did not finish is interrupted (KILLED; Ray runs it again on resume).
        """
        for trial_id, s in list(self.seen.items()):  # finished trials left `seen` when mirrored
            self._mirror(trial_id, s, Outcome("interrupted", reason="interrupted"))
        for run in self.tracker.children(self.exp, parent):
            tags = run.data.tags
            if tags.get("hpo.ray_trial_id") not in self.mirrored and tags.get("hpo.state") != "interrupted":
                self.tracker.end_child(run.info.run_id, "interrupted", {"hpo.reason": "interrupted"})

    def _close_paused(self, s: _Seen) -> None:
        for run_id in s.run_ids[:-1]:  # HyperBand paused it and Ray restarted it from scratch
            self.tracker.end_child(run_id, "interrupted", {"hpo.reason": "paused"})

    def _mirror(self, trial_id: str, s: _Seen, outcome: Outcome) -> None:
        if trial_id in self.mirrored:
            return
        attrs = {"hpo.backend": "ray", "hpo.ray_trial_id": trial_id, "hpo.trial": trial_number(trial_id),
                 "hpo.cuda_visible_devices": s.cuda, "hpo.worker": s.worker,
                 "hpo.mlflow_run_id": s.run_ids[-1] if s.run_ids else ""}
        mirror.add_trial(self.study, self.sw.spec, s.params, outcome, s.values, attrs)
        if outcome.state != "interrupted":
            self.mirrored.add(trial_id)
        self.seen.pop(trial_id, None)
        self.trials = self.study.get_trials(deepcopy=False)
        self.show(force=True)

    def show(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._shown < 0.5:
            return
        self._shown = time.monotonic()
        running = [SimpleNamespace(number=trial_number(tid), state=TrialState.RUNNING, intermediate_values=s.values,
                                   user_attrs={"hpo.worker": s.worker, "hpo.cuda_visible_devices": s.cuda})
                   for tid, s in self.seen.items()]
        self.progress.update([*self.trials, *running], len(running))


_sessions: dict[str, Session] = {}


class Bridge(tune.Callback):
    """Tune callback in the controller; it holds only a key, so the Tuner can pickle it."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _sessions[self.key].result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _sessions[self.key].complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        _sessions[self.key].error(trial)


# -- Ray itself ------------------------------------------------------------------------------
def _address(sw: Sweep) -> str | None:
    """`--ray-address`, else $RAY_ADDRESS (as `ray.init` reads it); None: a local Ray of our own."""
    return sw.options.get("ray_address") or os.environ.get("RAY_ADDRESS") or None


def _gpu_ids(sw: Sweep) -> list[str]:
    return list(dict.fromkeys(s.cuda_visible_devices for s in sw.slots if s.cuda_visible_devices))


def start_ray(sw: Sweep) -> bool:
    """Join `--ray-address`, or start a local Ray on this machine's cores and the chosen GPUs.

    The local Ray gets every core unless $HPO_RAY_NUM_CPUS says otherwise (tests, shared boxes).

    Returns whether this call started Ray (and so must shut it down).
    """
    quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if ray.is_initialized():
        return False
    address = _address(sw)
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types for "not there"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"--ray-address: cannot connect to {address!r}: {first}") from None
        return True
    gpus = _gpu_ids(sw)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:  # Ray hands out exactly these ids, one CUDA_VISIBLE_DEVICES per trial
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        cpus = sw.options.get("ray_num_cpus") or os.environ.get("HPO_RAY_NUM_CPUS") or os.cpu_count() or 1
        ray.init(address="local", num_cpus=int(cpus), num_gpus=len(gpus), **quiet)
    finally:
        if gpus and saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        elif gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return True


def _cluster() -> dict[str, float]:
    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def placement(sw: Sweep) -> tuple[dict[str, float], int]:
    """(resources per trial, concurrent trials): gpu 1/k on the chosen GPUs, else CPU slots."""
    res = _cluster()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    ids = _gpu_ids(sw)
    cluster = bool(_address(sw))  # its resources, not this machine's slots, set the concurrency
    per_gpu = len(sw.slots) // len(ids) if ids else (1 if gpus and cluster else 0)
    if per_gpu:
        slots = int(gpus * per_gpu) if cluster else len(sw.slots)
        return {"cpu": min(1.0, cpus / slots), "gpu": 1.0 / per_gpu}, slots
    slots = int(cpus) if cluster else len(sw.slots)
    return {"cpu": min(1.0, cpus / slots)}, slots


def _tuner(sw: Sweep, trainable, path: str, concurrency: int):
    if tune.Tuner.can_restore(path):
        # Finished trials stay finished; unfinished ones (Ctrl-C) start again. Errored trials
        # failed in the trainer: data, not retried (like a failed Optuna trial).
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=False), False
    searcher, space, samples = ray_space.search(sw.spec, sw.budget, concurrency, sw.options.get("seed"))
    limit = None if isinstance(searcher, BasicVariantGenerator) else concurrency  # it limits itself
    mode = "max" if sw.spec.direction == "maximize" else "min"
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=sw.spec.metric, mode=mode if sw.spec.metric else None, search_alg=searcher,
            scheduler=ray_space.scheduler(sw.spec, sw.options.get("ray_scheduler", "asha")),
            num_samples=samples, max_concurrent_trials=limit, reuse_actors=True),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=os.path.dirname(path), verbose=0,
                                  callbacks=[Bridge(sw.name)]),
    ), True


def _sigterm_to_sigint(signum, frame):
    signal.raise_signal(signal.SIGINT)


def _open(sw: Sweep) -> tuple[optuna.Study, Tracker, str, str]:
    study = studymod.open_study(sw)
    return (study, *studymod.open_parent(sw, study))


def run(sw: Sweep) -> studymod.Result:
    """Run the sweep on Ray Tune; return its Result (resumes runs/NAME/ray/tune if it exists)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Tune's console output is off; the trial's cwd stays the controller's (relative data dirs).
    for key, value in (("RAY_CHDIR_TO_TRIAL_DIR", "0"),
                       ("RAY_AIR_NEW_OUTPUT", "0")):
        os.environ.setdefault(key, value)
    # A cluster address is checked before anything is written; a local Ray's start
    # overlaps MLflow's first open (its schema), which takes seconds too.
    started = start_ray(sw) if _address(sw) else False
    with ThreadPoolExecutor(1) as pool:
        opening = pool.submit(_open, sw)
        try:
            started = started or start_ray(sw)
            resources, concurrency = placement(sw)
            study, tracker, exp, parent = opening.result()
        except BaseException:
            if started:
                ray.shutdown()
            raise
    progress = Progress(sw.name, sw.budget, sw.spec.metric, sw.spec.direction, sw.progress)
    session = _sessions[sw.name] = Session(sw, study, tracker, exp, progress)
    previous = signal.signal(signal.SIGTERM, _sigterm_to_sigint)
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)  # hpo's progress shows the trials; `hpo run` again resumes
    interrupted = False
    try:
        path = str((sw.dir / "ray" / EXPERIMENT).resolve())
        tracker.set_tags(parent, {"hpo.ray.address": _address(sw) or "local",
                                  "hpo.ray.cluster_resources": json.dumps(_cluster()),
                                  "hpo.ray.trial_resources": json.dumps(resources),
                                  "hpo.ray.concurrency": str(concurrency), "hpo.ray.experiment": path})
        ctx = TrialContext(sw.tracking_uri, exp, parent, sw.name, sw.spec.metric, session.max_t,
                           session.scheduler, sw.trainer, git_sha() or "none")
        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)
        tuner, fresh = _tuner(sw, trainable, path, concurrency)
        results = tuner.fit()
        # Ctrl-C makes Tune return early, with trials unfinished or not yet made.
        expected = sw.budget if fresh else len(results)
        interrupted = results.num_terminated + results.num_errors < max(expected, len(results))
    except KeyboardInterrupt:
        interrupted = True
    except Exception as exc:
        if "ray" not in type(exc).__module__:
            raise
        raise HpoError(f"Ray Tune failed: {exc}") from exc
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not cut clean-up
        try:
            if started:  # local: no trial writes after this; a cluster keeps running
                ray.shutdown()
            if interrupted:
                session.close_interrupted(parent)
            progress.close()
            result = replace(studymod.summarize(sw, study, parent, interrupted),
                             extra={"ray_experiment": str(sw.dir / "ray" / EXPERIMENT)})
            studymod.close_parent(sw, tracker, exp, result)
        finally:
            _sessions.pop(sw.name, None)
            tune_log.setLevel(level)
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    return result
