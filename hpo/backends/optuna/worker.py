"""A long-lived Optuna worker: takes queued trials until none are left.

It keeps the trainer module, its dataset and (on a GPU) its CUDA context
between trials. The controller starts one per slot with CUDA_VISIBLE_DEVICES
set; `hpo worker` starts one by hand, e.g. on another machine.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo import keys, spec as specmod
from hpo import control, liveness, storage, tracking, trainer_ref
from hpo import distributions as space
from hpo.diskspace import DiskFull, is_disk_full
from hpo.errors import HpoError, UsageError
from hpo.gpumon import own_gpu
from hpo.spec import hyperband
from hpo.tracking import Tracker
from hpo.trial import Interrupted, Outcome, State, TrialRun, lost


@dataclass(frozen=True)
class WorkerConfig:
    study: str
    storage: str
    tracking_uri: str | None = None  # default: the one the controller recorded in the study
    name: str = ""
    trainer: str | None = None  # default: the one the controller recorded in the study
    parent_pid: int | None = None  # stop when this process (the controller) is gone
    threads: int | None = None


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Interrupted("interrupted")


_controller_gone = threading.Event()


def _watch_parent(pid: int) -> None:
    # A controller killed with SIGKILL cannot stop its workers: they notice and stop themselves.
    while os.getppid() == pid:
        time.sleep(1.0)
    _controller_gone.set()
    os.kill(os.getpid(), signal.SIGTERM)


def load_study(cfg: WorkerConfig, wait: float = 60.0) -> tuple[optuna.Study, specmod.Spec]:
    """The sweep's study and spec; waits up to `wait` s for a controller that is still setting it up.

    A worker its controller started (`parent_pid`, `$HPO_LAUNCH`) is started before the parent run exists,
    so it waits for that run's own mark (`hpo.controller`, set last), not for what an earlier run left."""
    if cfg.parent_pid is None:
        storage.require_existing(cfg.storage)
    store = storage.open_storage(cfg.storage)
    launch = os.environ.get("HPO_LAUNCH") if cfg.parent_pid else None
    ready = (keys.CONTROLLER, launch) if launch else None
    deadline = time.monotonic() + wait
    while True:
        try:
            attrs = optuna.load_study(study_name=cfg.study, storage=store).user_attrs
        except KeyError:
            attrs = None
        if attrs is not None and keys.PARENT_RUN_ID in attrs and (not ready or attrs.get(ready[0]) == ready[1]):
            break
        if time.monotonic() > deadline:
            if attrs is None:
                raise UsageError(f"--study: no study named {cfg.study!r} in {storage.mask(cfg.storage)}")
            raise UsageError(f"--study: {cfg.study!r} was not created by `hpo run`")
        time.sleep(0.05 if ready else 1.0)
    spec = specmod.from_dict(json.loads(attrs[keys.SPEC]))
    # A study from before --optuna-pruner existed ran Optuna's HyperbandPruner: it keeps it.
    kind = attrs.get(keys.OPTUNA_PRUNER, "hyperband")
    study = optuna.load_study(
        study_name=cfg.study, storage=store, sampler=space.sampler(spec), pruner=space.pruner(spec, kind)
    )
    return study, spec


def serve(cfg: WorkerConfig) -> int:
    """Run trials until the queue is empty; return how many this worker ran."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    # The controller's Supervisor kills a worker that stops renewing its lease; any worker fences itself off.
    liveness.start_from_env(Path(tempfile.gettempdir()) / f"hpo-worker-{os.getpid()}.alive")
    if cfg.parent_pid:
        threading.Thread(target=_watch_parent, args=(cfg.parent_pid,), daemon=True).start()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.trainer:  # load the trainer (torch) and MLflow while the controller still sets the sweep up
        trainer = trainer_ref.load(cfg.trainer)
        importlib.import_module("mlflow.tracking")
        if cfg.trainer == trainer_ref.BUILTIN and os.environ.get("HPO_KEEP_MODELS", "0") != "0":
            from hpo import best_models  # the trainer hands its model over and the sweep keeps some: ready that too

            threading.Thread(target=best_models.warm, daemon=True, name="hpo-export-warm-up").start()
        if cfg.trainer == trainer_ref.BUILTIN and own_gpu():  # CUDA's start-up (seconds) while the sweep is set up
            from hpo.train import warm_cuda

            threading.Thread(target=warm_cuda, daemon=True, name="hpo-cuda-warm-up").start()
    # Started by a controller: it watches this worker, and waits as long as its MLflow set-up takes.
    study, spec = load_study(cfg, wait=600.0 if cfg.parent_pid else 60.0)
    attrs = study.user_attrs
    ref = cfg.trainer or attrs.get(keys.TRAINER)
    ref = None if ref == trainer_ref.BUILTIN else ref  # the built-in trainer is tagged as such
    if not cfg.trainer:
        trainer = trainer_ref.load(ref)
    if cfg.threads and "torch" in __import__("sys").modules:
        import torch

        torch.set_num_threads(cfg.threads)
    uri = cfg.tracking_uri or attrs.get(keys.TRACKING_URI)
    if not uri:
        raise UsageError("--tracking-uri: required here: the sweep's tracking URI holds a password, "
                         "so hpo did not store it in the study")
    ctx = _Context(study, spec, space.distributions(spec), trainer, TrialRun(
        tracker=Tracker(uri), experiment_id=attrs[keys.EXPERIMENT_ID],
        parent_id=attrs[keys.PARENT_RUN_ID], backend="optuna", study=study.study_name,
        worker=cfg.name or f"{socket.gethostname()}-{os.getpid()}", trainer_ref=ref,
        extra_tags={keys.GIT_SHA: attrs.get(keys.GIT_SHA) or "none"}, literal=spec.literal_names,
    ))
    done = 0
    try:
        while control.wait_while_paused(study) and (trial := storage.claim(study)) is not None:
            try:
                with storage.Heartbeat(study, trial._trial_id):  # noqa: SLF001
                    ctx.run(trial)
            except Exception as exc:  # MLflow or storage down: do not leave the trial RUNNING
                if is_disk_full(exc):  # nothing more can be written: the next `hpo run` repairs the trial
                    raise DiskFull(Path(cfg.storage).parent if "://" not in cfg.storage else "storage", exc) from None
                try:
                    storage.fail_trial(study, trial._trial_id, "worker died")  # noqa: SLF001
                except Exception:  # noqa: BLE001 - the store is down: the controller fails it as an orphan
                    pass
                if tracking.unreachable(exc):
                    raise TrackingDown(f"worker {ctx.trial_run.worker}: the tracking server stopped answering: "
                                       f"{storage.mask_text(str(exc))[:300]}") from exc
                raise HpoError(f"worker {ctx.trial_run.worker}: {type(exc).__name__}: {exc}") from exc
            done += 1
    except Interrupted:
        if _controller_gone.is_set():  # nobody else is left to close the sweep's parent run
            ctx.trial_run.tracker.set_tags(ctx.trial_run.parent_id, {keys.STATE: "controller died"})
            ctx.trial_run.tracker.client.set_terminated(ctx.trial_run.parent_id, status="KILLED")
        raise
    return done


@dataclass
class _Context:
    study: optuna.Study
    spec: specmod.Spec
    dists: dict
    trainer: Any
    trial_run: TrialRun

    last_step: int | None = None  # the pruner's max_resource: never prune there

    def __post_init__(self) -> None:
        if self.spec.hyperband is not None:
            self.last_step = hyperband.last_step(self.spec)

    def run(self, trial: optuna.Trial) -> Outcome:
        for key, value in ((keys.WORKER, self.trial_run.worker), (keys.HOST, socket.gethostname()),
                           (keys.PID, os.getpid()),
                           (keys.CUDA_VISIBLE_DEVICES, os.environ.get("CUDA_VISIBLE_DEVICES", ""))):
            trial.set_user_attr(key, value)
        params = {name: space.suggest(trial, name, d) for name, d in self.dists.items()}
        try:
            outcome, reporter = self.trial_run.run(
                trial.number, params, self.trainer, self.spec.metric,
                should_stop=(lambda step, value: _record(trial, step, value)) if self.spec.multi else
                lambda step, value: _prune(trial, step, value, self.last_step),
                on_start=lambda run_id: trial.set_user_attr(keys.MLFLOW_RUN_ID, run_id),
                tags={f"{keys.PREFIX}{k}": str(trial.user_attrs[f"{keys.PREFIX}{k}"]) for k in ("retry_of", "attempt")
                      if f"{keys.PREFIX}{k}" in trial.user_attrs},
                objectives=tuple(self.spec.metric_names) if self.spec.multi else (),
            )
        except Interrupted:
            self._tell(trial, lost("interrupted"))
            raise
        trial.set_user_attr(keys.TRAINER_SECONDS, round(reporter.seconds or 0.0, 4))
        self._tell(trial, outcome)
        return outcome

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        liveness.guard()  # stalled past its lease: the trial was failed meanwhile and belongs to nobody
        from hpo import mirror

        mirror.finish_trial(self.study, trial._trial_id, outcome, {}, live=trial)  # noqa: SLF001


class TrackingDown(HpoError):
    """The worker could not reach the tracking server (after MLflow's retries): its exit code says so."""

    exit_code = tracking.EXIT_UNREACHABLE


def _record(trial: optuna.Trial, step: int, value: float) -> bool:
    """A multi-objective trial: its first objective's value at each step, for the curves (no pruner ranks
    several objectives, and Trial.report refuses them)."""
    from hpo import mirror

    mirror.report(trial.study, trial._trial_id, step, value)  # noqa: SLF001
    return False


def _prune(trial: optuna.Trial, step: int, value: float, last_step: int | None) -> bool:
    liveness.guard()
    if step in trial._cached_frozen_trial.intermediate_values:  # noqa: SLF001 - Trial.report ignores a repeat
        # A repeated step replaces the earlier value: in the study, and in what the pruner sees next.
        trial.storage.set_trial_intermediate_value(trial._trial_id, step, value)  # noqa: SLF001
        trial._cached_frozen_trial.intermediate_values[step] = value  # noqa: SLF001
    else:
        trial.report(value, step)
    # Stopping a trial at its last epoch saves nothing and throws its result away.
    if last_step is not None and step >= last_step:
        return False
    return trial.should_prune()
