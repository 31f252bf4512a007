"""The Ray engine's controller side: start Ray, run Tuners for the trials still needed, report to the Session."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.progress_reporter import TrialProgressCallback

from hpo import keys
from hpo.backends.ray import space as ray_space
from hpo.backends.ray.trainable import RUN_ID, STEP, CUDA, TrialContext, plain, train_trial, trial_number
from hpo.errors import HpoError, UsageError
from hpo.provenance import git_sha
from hpo.trial import Outcome, State, deaths_per_config

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort



@dataclass
class _Seen:
    run_id: str = ""
    reports: int = 0
    stopped: bool = False


class Side:
    """The controller's view of one Tuner: turns Tune's callbacks into Session events (through its port)."""

    def __init__(self, plan: Plan, port: SessionPort):
        self.plan, self.port = plan, port
        self.max_t = ray_space.max_t(plan.spec)
        self.scheduler = plan.options.ray_scheduler
        self.seen: dict[str, _Seen] = {}
        # Ray places trials itself; each running trial still gets one of the sweep's slot names (cpu0, gpu1-w0,
        # as the other engines' workers are named), the lowest free one, so the view and the timeline read alike.
        self.free = [s.name for s in plan.slots]
        self.slot_of: dict[str, str] = {}

    def _take_slot(self, trial_id: str) -> str:
        if trial_id not in self.slot_of:
            self.slot_of[trial_id] = self.free.pop(0) if self.free else f"ray{len(self.slot_of)}"
        return self.slot_of[trial_id]

    def _free_slot(self, trial_id: str) -> None:
        names = [s.name for s in self.plan.slots]
        slot = self.slot_of.pop(trial_id, None)
        if slot in names:
            self.free = sorted([*self.free, slot], key=names.index)

    def start(self, trial) -> None:
        params = {k: plain(v) for k, v in trial.config.items()}
        self.port.trial_started(trial.trial_id, trial_number(trial.trial_id), params, worker=self._take_slot(trial.trial_id),
                                attrs={keys.RAY_TRIAL_ID: trial.trial_id})
        self.seen[trial.trial_id] = _Seen()

    def result(self, trial, result: dict) -> None:
        s = self.seen.setdefault(trial.trial_id, _Seen())
        run_id = result.get(RUN_ID, "")
        if run_id and run_id != s.run_id:  # a new run: HyperBand paused it and Ray started it again from step 1
            s.run_id, s.reports = run_id, 0
        s.reports += 1
        s.stopped = bool(result.get("done"))  # Tune marks the result on which its scheduler stops a trial
        self.port.trial_updated(trial.trial_id, run_id=run_id, cuda=str(result.get(CUDA, "")))
        if STEP in result:
            self.port.trial_reported(trial.trial_id, int(result[STEP]), result.get(self.plan.spec.metric))
        self.port.refresh(len(self.seen))

    def complete(self, trial) -> None:
        s = self.seen.pop(trial.trial_id, _Seen())
        self._free_slot(trial.trial_id)
        tags = self.port.trial_tags(trial.trial_id, find=(keys.RAY_TRIAL_ID, trial.trial_id))
        if tags.get(keys.STATE) == "failed":  # the trainer failed: its run says why
            outcome = Outcome(State.FAILED, reason=tags.get(keys.REASON, "error"),
                              error_type=tags.get(keys.ERROR_TYPE), error=tags.get(keys.ERROR))
        elif s.stopped and s.reports < self.max_t:
            outcome = Outcome(State.PRUNED, reason=f"stopped by {self.scheduler} after {s.reports} reports")
        elif self.plan.spec.multi:  # several objectives: the values the trial's own run recorded
            values = json.loads(tags[keys.VALUES]) if tags.get(keys.VALUES) else None
            if values is None or len(values) != len(self.plan.spec.metric_names):
                outcome = Outcome(State.FAILED, reason="no metric",
                                  error=f"the trial did not report every one of {self.plan.spec.metric_names}")
            else:
                outcome = Outcome(State.COMPLETE, values[0], values=values)
        else:
            outcome = Outcome(State.COMPLETE)  # its value: the Session's, from the report at its highest step
        # A stopped trial may be gone before it closed its run: close it here too (idempotent).
        self.port.trial_finished(trial.trial_id, outcome, close=outcome.state == State.PRUNED)
        self.port.refresh(len(self.seen))

    def died(self, trial) -> None:
        """Its worker (a Ray actor) died: the attempt is failed; Ray may run the trial's config again."""
        detail_text = _death_of(trial)
        self.seen.pop(trial.trial_id, None)
        self._free_slot(trial.trial_id)
        self.port.trial_lost(trial.trial_id, "worker died", detail_text)
        try:
            self.port.worker_exited(f"worker died ({detail_text})", "")
        except HpoError:
            pass  # port.aborting is set: the stopper ends the Tuner
        # again: Ray starts the trial once more (on_trial_start): a new Optuna trial, a new child run


_sides: dict[str, Side] = {}


def _death_of(trial) -> str:
    """Why a trial's Ray actor died, from the error file Tune writes for it (Ray does not know the signal:
    a process that ended without exiting was killed, by the OOM killer or a crash)."""
    try:
        text = Path(trial.error_file).read_text(errors="replace").rsplit("Failure #", 1)[-1] if trial.error_file else ""
    except OSError:
        text = ""
    pid = re.search(r"\bpid: (\d+)", text)
    where = f" (pid {pid[1]})" if pid else ""
    if "unexpectedly exits" in text or "OOM killer" in text:
        return f"the Ray actor's process{where} ended without exiting: killed or crashed"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"the Ray actor{where} died" + (f": {lines[-1][:300]}" if len(lines) > 1 else "")


class Quiet(TrialProgressCallback):
    """Tune's per-trial console lines ("Trial … completed. Last result: …" prints whatever the verbosity):
    hpo's progress shows the trials. Passing one of these keeps Tune from adding its own."""

    def _print(self, msg: str) -> None:
        pass


class Bridge(tune.Callback):
    """Tune callback in the controller; it holds only a key, so the Tuner can pickle it."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_start(self, iteration, trials, trial, **info):
        _sides[self.key].start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _sides[self.key].result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _sides[self.key].complete(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        _sides[self.key].died(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        _sides[self.key].died(trial)


class Abort(tune.Stopper):
    """Stops the whole Tuner once the Session gives up (crash loop)."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return _sides[self.key].port.aborting is not None


# -- Ray itself ------------------------------------------------------------------------------
def _address(plan: Plan) -> str | None:
    """`--ray-address`, else $RAY_ADDRESS (as `ray.init` reads it); None: a local Ray of our own."""
    return plan.options.ray_address or os.environ.get("RAY_ADDRESS") or None


def _gpu_ids(plan: Plan) -> list[str]:
    return list(dict.fromkeys(s.cuda_visible_devices for s in plan.slots if s.cuda_visible_devices))


class _RayLog:
    """Ray's own log records go to runs/NAME/logs/ray.log while the sweep runs, not into the live view: its "ray"
    logger writes to stderr, and `ray.init` (configure_logging=False) leaves it none, so Python's last-resort
    handler prints them (the token-auth notice of a new local Ray, ...)."""

    NAMES = ("ray", "ray._private.authentication.authentication_token_setup")  # the second logs inside ray.init

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.before = {n: (logging.getLogger(n).handlers, logging.getLogger(n).propagate) for n in self.NAMES}
        self.attach()

    def attach(self) -> None:  # again after ray.init, which empties the "ray" logger's handlers
        for name in self.NAMES:
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = [self.handler], False

    def detach(self) -> None:
        for name, (handlers, propagate) in self.before.items():
            logging.getLogger(name).handlers, logging.getLogger(name).propagate = handlers, propagate
        self.handler.close()


def start_ray(plan: Plan) -> bool:
    """Join `--ray-address`, or start a local Ray on this machine's cores and the chosen GPUs.

    The local Ray gets every core unless $HPO_RAY_NUM_CPUS says otherwise (tests, shared boxes).
    Returns whether this call started Ray (and so must shut it down).
    """
    if ray.is_initialized():
        return False
    address = _address(plan)
    if address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises several types for "not there"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"--ray-address: cannot connect to {address!r}: {first}") from None
        return True
    gpus = _gpu_ids(plan)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus:  # Ray hands out exactly these ids, one CUDA_VISIBLE_DEVICES per trial
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    try:
        cpus = plan.options.ray_num_cpus or os.environ.get("HPO_RAY_NUM_CPUS") or os.cpu_count() or 1
        ray.init(address="local", num_cpus=int(cpus), num_gpus=len(gpus), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    finally:
        if gpus and saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        elif gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return True


def _cluster() -> dict[str, float]:
    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}


def placement(plan: Plan) -> tuple[dict[str, float], int]:
    """(resources per trial, concurrent trials): gpu 1/k on the chosen GPUs, else CPU slots."""
    res = _cluster()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    ids = _gpu_ids(plan)
    cluster = bool(_address(plan))  # its resources, not this machine's slots, set the concurrency
    per_gpu = len(plan.slots) // len(ids) if ids else (1 if gpus and cluster else 0)
    if per_gpu:
        slots = int(gpus * per_gpu) if cluster else len(plan.slots)
        return {"cpu": min(1.0, cpus / slots), "gpu": 1.0 / per_gpu}, slots
    slots = int(cpus) if cluster else len(plan.slots)
    return {"cpu": min(1.0, cpus / slots)}, slots


def _todo_grid(plan: Plan, port: SessionPort) -> list[dict[str, Any]] | None:
    """A grid's points no counted trial has covered yet, in W&B's order."""
    if plan.grid is None:
        return None
    from hpo import storage

    trials, _ = port.snapshot()
    retried = storage.retried_numbers(trials)
    done = {json.dumps(t.params, sort_keys=True, default=str) for t in trials
            if storage.counts_toward_budget(t) and t.number not in retried}
    from hpo import distributions as space

    points = space.encoded_grid(plan.spec)  # the mirror holds list choices as JSON text, and so does Ray
    return [p for p in points if json.dumps(p, sort_keys=True, default=str) not in done]


def _tuner(plan: Plan, trainable, n: int, concurrency: int, path: str, grid: list | None):
    searcher, space, samples = ray_space.search(plan.spec, n, concurrency, plan.options.seed, grid)
    limit = None if isinstance(searcher, tune.search.BasicVariantGenerator) else concurrency  # it limits itself
    mode = None if not plan.spec.metric else "max" if plan.spec.direction == "maximize" else "min"
    metric = plan.spec.metric
    if plan.spec.multi:  # OptunaSearch holds the metrics and modes; Tune itself ranks nothing
        metric = mode = None
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, search_alg=searcher,
            scheduler=ray_space.scheduler(plan.spec, plan.options.ray_scheduler),
            num_samples=samples, max_concurrent_trials=limit, reuse_actors=True),
        run_config=tune.RunConfig(name=os.path.basename(path), storage_path=os.path.dirname(path), verbose=0,
                                  callbacks=[Bridge(plan.name), Quiet(), CSVLoggerCallback(), JsonLoggerCallback()],
                                  stop=Abort(plan.name),
                                  failure_config=tune.FailureConfig(max_failures=deaths_per_config() - 1)),
    )


def run(plan: Plan, port: SessionPort) -> None:
    """Tuners until the budget is met (a round's trials lost to dead workers are run in the next)."""
    # Tune's console output is off; the trial's cwd stays the controller's (relative data dirs);
    # Ctrl-C reaches the Session (Tune's own handler would swallow it); a trial that ends without ever
    # reporting the metric (a program that exits in argparse, a misspelled key) is one FAILED trial, as on
    # Optuna and W&B, not a ValueError that aborts the Tuner (its scheduler and searcher skip such a result).
    # Tune's per-trial CSV and JSON logs are kept (passed in `_tuner`); its TensorBoard logger is not: MLflow
    # has the curves, and importing tensorboardX costs ~1.7 s of every sweep's start.
    for key, value in (("RAY_CHDIR_TO_TRIAL_DIR", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("TUNE_DISABLE_SIGINT_HANDLER", "1"), ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1"),
                       ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")):
        os.environ.setdefault(key, value)
    ray_log = _RayLog(plan.dir / "logs" / "ray.log")
    try:
        started = start_ray(plan)
    except BaseException:
        ray_log.detach()
        raise
    ray_log.attach()
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)  # hpo's progress shows the trials
    _sides[plan.name] = Side(plan, port)
    try:
        resources, concurrency = placement(plan)
        port.tag_parent({
            keys.RAY_ADDRESS: _address(plan) or "local", keys.RAY_CLUSTER_RESOURCES: json.dumps(_cluster()),
            keys.RAY_TRIAL_RESOURCES: json.dumps(resources), keys.RAY_CONCURRENCY: str(concurrency)})
        ctx = TrialContext(plan.tracking_uri, port.parent.experiment_id, port.parent.run_id, plan.name,
                           plan.spec.metric, ray_space.max_t(plan.spec), plan.options.ray_scheduler,
                           plan.trainer, git_sha() or "none", tuple(sorted(plan.spec.literal_names)),
                           tuple(ray_space.encoded_names(plan.spec)),
                           tuple(plan.spec.metric_names) if plan.spec.multi else ())
        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)
        while (n := port.remaining()) > 0:
            before = port.snapshot()[1].finished
            path = str((plan.dir / "ray" / f"tune-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}").resolve())
            grid = _todo_grid(plan, port)
            if grid == []:
                return
            _tuner(plan, trainable, n, concurrency, path, grid).fit()
            if port.aborting:
                raise HpoError(port.aborting)
            if port.snapshot()[1].finished == before:
                raise HpoError(f"ray: a Tuner of {n} trials finished none of them; see {plan.dir / 'ray'}")
    except Exception as exc:
        if isinstance(exc, HpoError) or "ray" not in type(exc).__module__:
            raise
        raise HpoError(f"Ray Tune failed: {exc}") from exc
    finally:
        _sides.pop(plan.name, None)
        tune_log.setLevel(level)
        ray_log.detach()
        if started:  # local: no trial writes after this; a cluster keeps running
            ray.shutdown()
