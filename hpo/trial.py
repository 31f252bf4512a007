"""One trial, the same on every engine: its State, its Outcome, the `report` a trainer calls, its MLflow child run.

The trainer calls `report(step, metrics)` once per epoch. Each engine supplies a
`should_stop` (Optuna's pruner, Ray's scheduler, W&B's hyperband) and a sink;
this module supplies the rest: NaN detection, the outcome, and the child run
opened with params and tags and closed with FINISHED / KILLED / FAILED.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

from hpo import keys
from hpo.redact import mask_text
from hpo.gpumon import TrialGpu, own_gpu
from hpo.program import TRIAL

# Failures that are not the trial's fault: the trial is run again and not counted.
INFRA_REASONS = ("worker died", "worker hung", "interrupted")
# A config whose trials killed their worker this many times is failed for good: counted, never re-run.
KILLS_ITS_WORKER = "kills its worker"


def deaths_per_config() -> int:
    """How many times one config may kill its worker before it is failed for good ($HPO_DEATHS_PER_CONFIG, 2)."""
    import os

    return max(1, int(os.environ.get("HPO_DEATHS_PER_CONFIG", "2")))


class State(str, Enum):
    """The closed set of ways a trial ends, and what each is called by MLflow, Optuna and W&B."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: not the trial's fault; run again on resume

    @property
    def mlflow_status(self) -> str:
        """A pruned trial ran as asked and stopped where the schedule said: FINISHED (its `hpo.state` tag says
        pruned), as Ray Tune shows an early-stopped trial TERMINATED, not an error; only an interrupt is KILLED."""
        return {"failed": "FAILED", "interrupted": "KILLED"}.get(self.value, "FINISHED")

    @property
    def optuna_state(self) -> Any:
        from optuna.trial import TrialState

        return {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(self.value, TrialState.FAIL)

    @property
    def wandb_state(self) -> str:
        return {"complete": "finished", "pruned": "killed", "failed": "failed", "interrupted": "crashed"}[self.value]

    @property
    def exit_code(self) -> int:
        """The exit code a wandb run ends with."""
        return {"complete": 0, "pruned": 0, "failed": 1, "interrupted": 255}[self.value]


class Pruned(Exception):
    """Raised by `report` when the early-termination rule stops the trial."""


class TrialFailed(Exception):
    """Raised by `report` when a trial cannot go on (e.g. a NaN loss)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class Interrupted(BaseException):
    """The worker was asked to stop (SIGTERM / Ctrl-C): not the trial's fault."""


@dataclass(frozen=True)
class Outcome:
    """How one trial ended."""

    state: State
    value: float | None = None
    reason: str | None = None
    error_type: str | None = None
    error: str | None = None
    values: tuple[float, ...] | None = None  # a multi-objective trial's values, one per `metrics:` entry

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", State(self.state))
        if self.values is not None:
            object.__setattr__(self, "values", tuple(float(v) for v in self.values))

    @property
    def infra(self) -> bool:
        """Ended by the machine (dead worker, interrupt), not by the trial: it does not use the budget."""
        return self.reason in INFRA_REASONS

    def tags(self) -> dict[str, str]:
        out = {keys.STATE: self.state.value}
        for key in ("reason", "error_type", "error"):
            if getattr(self, key):  # an error's end says why (the exception's line, argparse's `error:`), masked
                text = mask_text(str(getattr(self, key)))
                out[f"{keys.PREFIX}{key}"] = text if len(text) <= 1000 else "..." + text[-997:]
        if self.values is not None:  # a multi-objective trial's values, for whoever reads its run (Ray's side)
            out[keys.VALUES] = json.dumps(list(self.values))
        return out

    def fields(self) -> dict[str, Any]:
        """Plain data (for a pipe to the controller)."""
        return {"state": self.state.value, "value": self.value, "reason": self.reason,
                "error_type": self.error_type, "error": self.error, "values": self.values}


def lost(reason: str, detail: str = "") -> Outcome:
    """The outcome of a trial whose worker is gone (`worker died`) or was stopped (`interrupted`)."""
    state = State.INTERRUPTED if reason == "interrupted" else State.FAILED
    return Outcome(state, reason=reason, error=detail or None)


@dataclass
class Reporter:
    """The `report` callable handed to a trainer for one trial."""

    metric: str | None
    sink: Callable[[int, Mapping[str, float]], None]
    should_stop: Callable[[int, float], bool] = lambda step, value: False
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float | None = None  # the trainer's own wall time (hpo's before and after left out)
    candidate: Any = None  # hpo.best_models.Candidate: the trained model, handed over by `model(...)`
    objectives: tuple[str, ...] = ()  # a multi-objective sweep's metrics (`metric` is the first of them)

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append((int(step), metrics))
        bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        self.sink(int(step), {k: v for k, v in metrics.items() if math.isfinite(v)})
        if bad:
            raise TrialFailed("nan", f"{', '.join(bad)} is not finite at step {step}")
        value = metrics.get(self.metric) if self.metric else None
        if value is not None and self.should_stop(int(step), value):
            raise Pruned(f"stopped at step {step}")

    def model(self, model: Any, input_example: Any = None, validation: Any = None) -> None:
        """The trained model (a torch.nn.Module taking raw inputs), a few raw inputs (numpy) for its signature,
        and optionally the validation split `(inputs, labels, class_names)` for its evaluation. hpo logs it as
        an MLflow model when the trial completes among the sweep's best few (`--keep-models`)."""
        from hpo.best_models import Candidate

        self.candidate = Candidate(model, input_example, validation)

    def last(self, name: str | None) -> float | None:
        """A trial's value: the report at its highest step (steps out of order: 3, 1, 2 ends at step 3's;
        a repeated step: its later report). The same rule as the Session's, MLflow's and the pruner's."""
        found: tuple[int, float] | None = None
        for step, m in self.history:
            if name in m and (found is None or step >= found[0]):
                found = (step, m[name])
        return None if found is None else found[1]


def run_trainer(trainer: Callable, config: Mapping[str, Any], reporter: Reporter) -> Outcome:
    """Run one trial; every way it can end becomes an Outcome (Interrupted propagates)."""
    try:
        final = trainer(dict(config), reporter)
        if reporter.candidate is None and type(final).__module__ != "builtins" and hasattr(final, "state_dict"):
            reporter.model(final)  # `train` returned its model
    except Pruned as exc:
        return Outcome(State.PRUNED, reporter.last(reporter.metric), reason=str(exc))
    except TrialFailed as exc:
        return Outcome(State.FAILED, reason=exc.reason, error_type="TrialFailed", error=str(exc))
    except SystemExit as exc:  # a script turned into a function ends with sys.exit(...): the trial ends there
        if exc.code not in (None, 0):
            return Outcome(State.FAILED, reason="exit", error_type="SystemExit",
                           error=f"the trainer called sys.exit({exc.code!r})")
        final = None  # sys.exit(0): ended as a script ends; its value is its last report
    except Exception as exc:  # noqa: BLE001 - a failed trial is data, not a crash
        from hpo.diskspace import fault
        from hpo.storage_outage import StorageDown

        # A full disk stops everyone's writes: the machine's fault. A read-only or forbidden file of the
        # trainer's own (its data, its checkpoints) is the trial's.
        if fault(exc) == "disk full" or isinstance(exc, StorageDown):
            raise
        return _failure(exc)
    if len(reporter.objectives) > 1:
        return _objectives(reporter, final)
    value = reporter.last(reporter.metric)
    if value is None and reporter.metric and isinstance(final, Mapping):
        value = final.get(reporter.metric)
    if reporter.metric and value is None:
        return Outcome(State.FAILED, reason="no metric", error=never_reported([reporter.metric], reporter, final))
    if value is not None and not math.isfinite(float(value)):
        return Outcome(State.FAILED, reason="nan", error=f"{reporter.metric} is {value}")
    return Outcome(State.COMPLETE, None if value is None else float(value))


def never_reported(missing: list[str], reporter: Reporter, final: Any = None) -> str:
    """`the trainer never reported 'acc'`, with the keys it did report and the closest one to each missing
    name (`Training Set Accuracy` for `Training set accuracy`): a misspelled metric is found at once."""
    import difflib

    seen = list(dict.fromkeys(k for _, m in reporter.history for k in m))
    if isinstance(final, Mapping):
        seen += [k for k in final if isinstance(k, str) and k not in seen]
    text = f"the trainer never reported {', '.join(repr(m) for m in missing)}"
    if not seen:
        return text + " (it reported no metric at all)"
    lower = {k.lower(): k for k in seen}
    close = [lower[c] for m in missing for c in difflib.get_close_matches(m.lower(), list(lower), n=1, cutoff=0.6)]
    shown = ", ".join(repr(k) for k in seen[:8]) + (", ..." if len(seen) > 8 else "")
    return text + f"; it reported {shown}" + (f"; did you mean {close[0]!r} (metric.name)?" if close else "")


def _objectives(reporter: Reporter, final: Any) -> Outcome:
    """A multi-objective trial's values: the last reported value of each metric (or the returned one)."""
    values = {}
    for name in reporter.objectives:
        value = reporter.last(name)
        if value is None and isinstance(final, Mapping):
            value = final.get(name)
        values[name] = value
    missing = [n for n, v in values.items() if v is None]
    if missing:
        return Outcome(State.FAILED, reason="no metric", error=never_reported(missing, reporter, final))
    bad = [n for n, v in values.items() if not math.isfinite(float(v))]
    if bad:
        return Outcome(State.FAILED, reason="nan", error=f"{', '.join(bad)} is not finite")
    ordered = tuple(float(values[n]) for n in reporter.objectives)
    return Outcome(State.COMPLETE, ordered[0], values=ordered)


def _failure(exc: Exception) -> Outcome:
    name = type(exc).__name__
    if isinstance(exc, MemoryError):
        return Outcome(State.FAILED, reason="oom", error_type=name, error=str(exc) or "out of host memory")
    oom = name == "OutOfMemoryError" or "out of memory" in str(exc).lower()
    if oom and "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the worker keeps serving: give the memory back
    return Outcome(State.FAILED, reason="oom" if oom else "error", error_type=name, error=str(exc) or name)


def close_child(tracker: Any, run_id: str, outcome: Outcome, tags: Mapping[str, str] | None = None,
                strict: bool = False) -> None:
    """End (or amend) a trial's child run with its outcome. Idempotent: the last call wins."""
    tracker.end_child(run_id, outcome.state.mlflow_status, {**outcome.tags(), **(tags or {})}, strict=strict)


@dataclass
class TrialRun:
    """Where a trial's child run goes and what it is tagged with; runs the trainer under it."""

    tracker: Any  # hpo.tracking.Tracker
    experiment_id: str
    parent_id: str
    backend: str
    study: str
    worker: str
    trainer_ref: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    literal: frozenset[str] = frozenset()  # the spec's literal dotted names (Spec.literal_names)

    def tags(self, number: int | str, config: Mapping[str, Any]) -> dict[str, str]:
        from hpo.provenance import environment_tags

        return {
            **environment_tags(), **self.extra_tags, keys.BACKEND: self.backend, keys.STUDY: self.study,
            keys.TRIAL: str(number), keys.WORKER: self.worker,
            keys.CUDA_VISIBLE_DEVICES: os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            keys.STATE: "running", keys.SEED: str(config.get("seed", 0)),
        }

    def run(self, number: int | str, params: Mapping[str, Any], trainer: Callable, metric: str | None,
            should_stop: Callable[[int, float], bool] = lambda s, v: False,
            on_start: Callable[[str], None] = lambda run_id: None,
            on_report: Callable[[int, Mapping[str, float]], None] = lambda s, m: None,
            tags: Mapping[str, str] | None = None, objectives: tuple[str, ...] = ()) -> tuple[Outcome, Reporter]:
        """Run the trainer under a child run; Interrupted ends the run KILLED and propagates."""
        from hpo.spec import unflatten

        config = unflatten(params, self.literal)
        run_id = self.tracker.start_child(self.experiment_id, self.parent_id, f"trial-{number}", params,
                                          {**self.tags(number, config), **(tags or {})})
        on_start(run_id)
        TRIAL.set({**TRIAL.get(), "number": number, "run_id": run_id, "tracking_uri": self.tracker.uri,
                   "experiment_id": self.experiment_id})

        def sink(step: int, metrics: Mapping[str, float]) -> None:
            self.tracker.queue_metrics(run_id, step, metrics)  # written off the trainer's critical path
            on_report(step, metrics)

        reporter = Reporter(metric, sink=sink, should_stop=should_stop, objectives=tuple(objectives))
        gpu = TrialGpu(own_gpu())  # NVML on this worker's GPU while the trainer runs (nothing on a CPU)
        started = time.monotonic()
        try:
            try:
                outcome = run_trainer(trainer, config, reporter)
            finally:
                used = gpu.finish()
            reporter.seconds = time.monotonic() - started
            if used:  # the GPU's mean utilisation and peak memory in use over this trial
                self._queue_gpu(run_id, reporter, used)
            tags = {keys.TRAINER_SECONDS: f"{reporter.seconds:.3f}"}
            if outcome.state == State.COMPLETE and reporter.candidate is not None:
                tags.update(self._keep(run_id, outcome, reporter))
            return self._finish(run_id, config, outcome, tags), reporter
        except Interrupted:  # in the trainer, or while its last write is flushed
            self.end(run_id, config, lost("interrupted"))
            raise

    def _queue_gpu(self, run_id: str, reporter: Reporter, used: Mapping[str, float]) -> None:
        """Never the trial's undoing: a writer that already failed says so when the run is closed (`_finish`)."""
        try:
            self.tracker.queue_metrics(run_id, reporter.history[-1][0] if reporter.history else 0, used)
        except Exception:  # noqa: BLE001
            pass

    def _keep(self, run_id: str, outcome: Outcome, reporter: Reporter) -> dict[str, str]:
        """Log the trial's model when it is among the sweep's best few; a model that cannot be logged is noted
        on the run (and on stderr), and the trial stays complete."""
        from hpo.diskspace import is_disk_full
        from hpo.best_models import keep
        from hpo.storage_outage import StorageDown

        candidate, reporter.candidate = reporter.candidate, None  # the weights are not held after this
        try:
            keep(self.tracker, self.experiment_id, self.parent_id, run_id, outcome.value, candidate)
            return {}  # keep() tagged the run itself (re-writing its tags here could undo an eviction)
        except Exception as exc:  # noqa: BLE001
            if is_disk_full(exc) or isinstance(exc, StorageDown):
                raise
            _failure(exc)  # a CUDA out-of-memory error: the memory goes back for the next trial
            what = mask_text(f"{type(exc).__name__}: {exc}")
            print(f"hpo: warning: trial {run_id}: its model was not logged: {what}", file=sys.stderr)
            return {keys.MODEL_ERROR: what[:1000]}

    def _finish(self, run_id: str, config: Mapping[str, Any], outcome: Outcome, tags: Mapping[str, str]) -> Outcome:
        """End the child run: what is still queued (metrics, params) and the end tags in one write, then the
        status. The trial's data is in MLflow before it is told finished; a write that failed fails it."""
        from hpo.diskspace import is_disk_full
        from hpo.storage_outage import StorageDown
        from hpo.provenance import dataset_tags

        try:
            close_child(self.tracker, run_id, outcome, {**dataset_tags(config, self.trainer_ref), **tags},
                        strict=True)
            return outcome
        except Exception as exc:  # noqa: BLE001
            if is_disk_full(exc) or isinstance(exc, StorageDown):
                raise  # the machine's fault, not the trial's
            failed = Outcome(State.FAILED, reason="tracking", error_type=type(exc).__name__,
                             error=f"its metrics could not be written to MLflow: {exc}")
            self.end(run_id, config, failed, tags)
            return failed

    def end(self, run_id: str, config: Mapping[str, Any], outcome: Outcome,
            tags: Mapping[str, str] | None = None) -> None:
        from hpo.provenance import dataset_tags

        close_child(self.tracker, run_id, outcome, {**dataset_tags(config, self.trainer_ref), **(tags or {})})
