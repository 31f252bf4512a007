"""A sweep's life, the same on every engine.

The Session opens (or resumes) the Optuna study and the MLflow parent run before
any worker starts, turns SIGTERM into Ctrl-C, shows progress, mirrors the trials
of engines that do not write Optuna themselves, fails the trials of workers that
died, stops a crash loop, and closes everything with one summary: the parent ends
FINISHED, KILLED (interrupted) or FAILED (aborted, or no trial finished).
Engines (hpo.backends) only start trials and report their events here.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import best_models, control, diskspace, gpumon, keys, mirror, mlflow_store, orphans, status, status_file, storage, summary, tracking
from hpo.plan import Plan, Result
from hpo.errors import HpoError, UsageError
from hpo.folder_lock import folder_lock
from hpo.progress import Progress
from hpo.provenance import git_sha
from hpo.spec import changes, from_dict
from hpo.tracking import Tracker
from hpo.trainer_ref import label as trainer_label
from hpo.backends.port import Parent
from hpo.trial import KILLS_ITS_WORKER, Outcome, deaths_per_config, State, close_child, lost

if TYPE_CHECKING:
    from hpo.backends.base import Backend


ORPHAN_TAG = keys.ORPHAN  # a child run no trial names: left by a stop between making it and recording it


@dataclass
class Live:
    """A running trial of a mirrored engine, as the Session sees it."""

    trial_id: int
    number: int | str
    worker: str
    cuda: str
    run_id: str = ""
    values: dict[int, float] = field(default_factory=dict)


class Session:
    """Owns one sweep on one engine from open to close; `run()` returns its Result."""

    def __init__(self, plan: Plan, backend: Backend):
        self.plan, self.backend = plan, backend
        self.spec = plan.spec
        self.study: optuna.Study | None = None
        self.tracker: Tracker | None = None
        self.experiment_id = self.parent_run_id = ""
        self.progress: Progress | None = None
        self.tally = storage.Tally()  # counts of the study, kept up to date at each poll
        self.early: Any = None  # what the engine started while the parent run was opened (Backend.prestart)
        self._published, self._published_at, self._store_print = "", 0.0, None  # status.json (_publish)
        self._stale_checked_at = -float("inf")  # fail_stale
        self._stale = storage.StaleTrials()
        self.keep_k = best_models.DEFAULT_K  # --keep-models, as the sweep was opened with it
        self._snapshotting: threading.Thread | None = None  # the environment snapshot (Session._snapshot)
        self.launch = uuid.uuid4().hex  # this run's mark (`hpo.controller`): the workers it starts wait for it
        self.live: dict[Any, Live] = {}
        self.aborting: str | None = None
        self.max_deaths = max(5, 2 * len(plan.slots))
        self.deaths_per_config = deaths_per_config()
        self.unclosed: HpoError | None = None  # the parent run could not be closed (the server went away)
        self._deaths, self._counted_at_death = 0, -1
        gpus = [s.cuda_visible_devices for s in plan.slots if s.cuda_visible_devices]
        # NVML, read from this process (no CUDA context): each GPU's busy fraction, and what `auto` packs by.
        # `gpu_reader` stands in for NVML in tests on machines without a GPU.
        reader = plan.options.gpu_reader or (gpumon.open_nvml() if gpus else None)
        self.gpus = gpumon.Monitor(gpus, reader)
        self.packing: list = []  # hpo.packing decisions of `--workers-per-gpu auto`, as they are made

    # -- the whole life -------------------------------------------------------------------
    def run(self) -> Result:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.plan = self.backend.begin(self.plan)  # e.g. the sweep on W&B's server: before anything is written
        diskspace.warn_if_low(self.plan.dir, self.plan.budget)
        self.gpus.start()  # first sample: the memory in use before any worker of this sweep
        try:
            self.open()
        except BaseException as exc:  # Ctrl-C during MLflow's set-up too: no worker outlives the sweep
            self.stop_early()
            self.gpus.stop()
            if isinstance(exc, Exception) and diskspace.is_disk_full(exc):
                raise diskspace.DiskFull(self.plan.dir, exc) from None
            raise
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGTSTP)}
        signal.signal(signal.SIGINT, _first_ctrl_c)
        signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
        signal.signal(signal.SIGTSTP, _ctrl_z)
        interrupted, error = False, None
        watch = control.Watch(self.study, self._stopped_by_control)  # `hpo stop`, from any machine
        try:
            if not self.nothing_left():  # else `open` said so
                if not self.plan.options.no_report:  # the report's imports (2-3 s) while trials run, not after
                    from hpo.htmlreport import IMPORTANCE_MIN

                    names = ["optuna.visualization", "plotly.io"] + (
                        ["optuna.importance"] if self.plan.budget >= IMPORTANCE_MIN else [])
                    threading.Thread(target=_import_quietly, daemon=True, args=names).start()
                self.progress = Progress(self.plan.name, self.plan.budget, self.spec.metric, self.spec.direction,
                                         self.plan.progress, [t.number for t in self.trials() if t.state.is_finished()])
                early, self.early = self.early, None  # the engine takes it over, and stops it
                self.backend.run(self.plan, self, early)
        except KeyboardInterrupt:
            interrupted = True
        except BrokenPipeError as exc:  # `hpo run ... | head`: the reader left; an interrupt, not a failure
            if not _stdio_closed():
                error = self._as_error(exc)
            interrupted = error is None
        except Exception as exc:  # a full disk, or an engine's own failure: closed FAILED, then reported
            error = self._as_error(exc)
        finally:
            # A second Ctrl-C must not cut the clean-up short: runs would stay RUNNING.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
            watch.close()
            self.stop_early()
            try:
                result = self.close(interrupted, str(error) if error else self.aborting)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        if error is None:
            error = self.unclosed
        if error is not None:
            raise error
        return result

    def _as_error(self, exc: Exception) -> HpoError:
        if diskspace.is_disk_full(exc):
            return exc if isinstance(exc, diskspace.DiskFull) else diskspace.DiskFull(self.plan.dir, exc)
        if isinstance(exc, HpoError):
            return exc
        error = HpoError(f"{self.plan.backend} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    # -- open -----------------------------------------------------------------------------
    def open(self) -> None:
        """The study (created, or resumed when its spec and engine match) and the parent run."""
        plan = self.plan
        store = storage.open_storage(plan.storage, incremental=True)  # first: an unreachable database writes nothing
        try:
            old = optuna.load_study(study_name=plan.name, storage=store)
        except KeyError:
            old = None
        if old is not None:
            self._check_resume(old)
        plan.dir.mkdir(parents=True, exist_ok=True)
        self.study = optuna.create_study(study_name=plan.name, storage=store, directions=self.spec.directions,
                                         load_if_exists=True)
        names = self.spec.metric_names or [mirror.NO_METRIC]  # no metric: a trial's value is its run time
        if self.study.metric_names != names:
            with warnings.catch_warnings():  # "experimental" since Optuna 3.2: not the user's concern
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(names)  # optuna-dashboard: val_acc, not Objective 0
        was = control.state(self.study)
        if was:  # running the sweep again is its resume
            control.set_state(self.study, None)
            print(f"hpo: sweep {plan.name!r} was {was} (hpo {'pause' if was == control.PAUSED else 'stop'}); "
                  "running it again", file=sys.stderr)
        c = self.counts()  # one read of the study for the first line, the workers and the parent run
        left = self.nothing_left(c)
        self._announce(c.finished, left)  # the first line, before MLflow loads (seconds)
        if not left:
            self.early = self.backend.prestart(plan, self)
        try:
            with folder_lock(plan.dir):  # two controllers starting one new sweep make one experiment, one parent
                self._open_parent(left)
        except HpoError:
            self.stop_early()
            raise
        except Exception as exc:  # an MLflow server that answers 500s, a store it cannot open: one line
            self.stop_early()
            if diskspace.is_disk_full(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise HpoError(f"--tracking-uri: cannot use {storage.mask(plan.tracking_uri)}: {storage.mask(first)}") from None
        if old is not None:  # a controller killed earlier leaves RUNNING trials and child runs behind
            self.fail_orphans("worker died", "found RUNNING when the sweep resumed")
            if self.backend.mirrored:
                self._end_running_children("worker died")
            _best_effort(self._mark_orphan_children)

    def _stopped_by_control(self) -> None:
        print(f"hpo: sweep {self.plan.name!r} stopped (hpo stop): its running trials end interrupted", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGINT)  # exactly Ctrl-C: every engine stops its trials and ends resumable

    def _announce(self, done: int, left: bool) -> None:
        plan = self.plan
        cpu = "" if any(s.cuda_visible_devices for s in plan.slots) else " (no GPU used)"
        workers = f"{len(plan.slots)} worker(s) [{', '.join(s.name for s in plan.slots)}]{cpu}; writing {plan.dir}/"
        if left:
            print(f"hpo: sweep {plan.name!r}: {done} trials done, budget {plan.budget}: nothing left to run "
                  f"(--trials above {done} runs more; --study NAME starts a new study)", file=sys.stderr)
        elif done:
            print(f"hpo: resuming sweep {plan.name!r} on {plan.backend}: {done}/{plan.budget} trials done, the rest "
                  f"over {workers}", file=sys.stderr)
        else:
            print(f"hpo: sweep {plan.name!r} on {plan.backend}: {plan.budget} trials over {workers}", file=sys.stderr)

    def _check_resume(self, old: optuna.Study) -> None:
        attrs, where = old.user_attrs, f"{self.plan.name!r} in {storage.mask(self.plan.storage)}"
        goals = [d.name.lower() for d in old.directions]
        if goals != self.spec.directions:
            field_name = "metrics" if self.spec.multi or len(goals) > 1 else "metric.goal"
            raise UsageError(f"{field_name}: study {where} already exists with goal {', '.join(goals)}; "
                             "use --study NAME for a new study")
        if attrs.get(keys.BACKEND) and attrs[keys.BACKEND] != self.plan.backend:
            raise UsageError(f"--backend: study {where} was run on {attrs[keys.BACKEND]}; resume it there, "
                             "or use --study NAME for a new study")
        if keys.SPEC in attrs:
            changed = changes(from_dict(json.loads(attrs[keys.SPEC])), self.spec)
            if changed:
                raise UsageError(f"{changed[0]}: study {where} was made with a different sweep "
                                 f"({'; '.join(changed)}); use --study NAME for a new study")

    def _open_parent(self, nothing_left: bool = False) -> None:
        plan, study = self.plan, self.study
        # `--trials 10` after 30 done runs nothing and leaves the recorded budget as it was
        budget = study.user_attrs.get(keys.BUDGET, plan.budget) if nothing_left else plan.budget
        mlflow_store.ensure(plan.tracking_uri)  # a new SQLite store appears whole or not at all
        self.tracker = Tracker(plan.tracking_uri)
        self.experiment_id = self.tracker.experiment(plan.name, artifact_dir=self._artifact_dir())
        uid = study.user_attrs.get(tracking.STUDY_UID_TAG)
        if not uid:  # first in the journal, then the parent run: a kill between the two makes no second parent
            uid = uuid.uuid4().hex
            study.set_user_attr(tracking.STUDY_UID_TAG, uid)
        tags = {keys.BACKEND: plan.backend, keys.STUDY: plan.name, tracking.STUDY_UID_TAG: uid, keys.STORAGE: storage.mask(plan.storage),
                keys.CONTROLLER: f"{socket.gethostname()}:{os.getpid()}",
                keys.BUDGET: str(budget),
                keys.STATE: "running", keys.TRAINER: trainer_label(plan.trainer) or "hpo.train:train",
                best_models.K_TAG: str(self._keep_k(study))}
        if plan.options.pack_cap:
            tags[keys.WORKERS_PER_GPU] = f"auto (cap {plan.options.pack_cap}): measuring"
        params = {"method": self.spec.method, "metric": self.spec.metric or "", "goal": self.spec.goal,
                  "backend": plan.backend, "slots": len(plan.slots)}
        self.parent_run_id = self.tracker.start_parent(self.experiment_id, plan.name, params, tags,
                                                       resume_id=study.user_attrs.get(keys.PARENT_RUN_ID))
        # Off the start-up path: written while the trials run, waited for when the sweep closes.
        self._snapshotting = threading.Thread(target=_best_effort, args=(self._snapshot,), daemon=True)
        self._snapshotting.start()
        attrs = {
            keys.SPEC: json.dumps(self.spec.raw), keys.EXPERIMENT_ID: self.experiment_id,
            keys.TRACKING_URI: plan.tracking_uri if storage.mask(plan.tracking_uri) == plan.tracking_uri else "",
            keys.GIT_SHA: git_sha() or "", keys.TRAINER: plan.trainer or "", keys.BACKEND: plan.backend,
            keys.BUDGET: budget,
            keys.PARENT_RUN_ID: self.parent_run_id,  # a joining `hpo worker` waits for it
            keys.CONTROLLER: self.launch,  # last: the workers this run started wait for it
        }
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)

    def _artifact_dir(self) -> Path | None:
        """runs/NAME/artifacts for a store on this machine; a tracking server keeps (or serves) its own."""
        return self.plan.dir / "artifacts" if tracking.is_local(self.plan.tracking_uri) else None

    def _snapshot(self) -> None:
        """The environment the sweep ran in, on its parent run (rewritten by a resume)."""
        from hpo.provenance import snapshot

        files = snapshot(sys.argv, os.getcwd())
        self.tracker.log_texts(self.parent_run_id, files, "environment")
        self.tracker.set_tags(self.parent_run_id, {keys.GIT_DIRTY: str("git.diff" in files).lower()})

    def stop_early(self) -> None:
        """Stop what `Backend.prestart` started when the sweep ends before the engine took it over."""
        early, self.early = self.early, None
        if early is not None:
            _best_effort(early.stop)

    # -- what engines ask -----------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def snapshot(self) -> tuple[list[FrozenTrial], storage.Counts]:
        """One read of the study and its counts, for an engine's poll."""
        trials = self.trials()
        return trials, self.tally.count(trials)

    def top_up(self, grid: list[dict[str, Any]] | None) -> tuple[list[FrozenTrial], storage.Counts]:
        """Queue trials (retries first) until finished + running + queued meets the budget: the one place the
        budget is counted for a queue. Returns the study as read, with what was just queued as waiting."""
        with folder_lock(self.plan.dir):  # two controllers of one sweep on this machine never both fill a gap
            storage.queue_retries(self.study, self.plan.retries)
            trials = self.trials()
            counts = self.tally.count(trials)
            added = storage.fill_queue(self.study, self.plan.budget, grid, trials=trials, counts=counts)
        return trials, replace(counts, waiting=counts.waiting + added)

    @property
    def parent(self) -> Parent:
        return Parent(self.experiment_id, self.parent_run_id, self.launch)

    def tag_parent(self, tags: Mapping[str, str]) -> None:
        self.tracker.set_tags(self.parent_run_id, tags)

    def counts(self) -> storage.Counts:
        return self.tally.count(self.trials())

    def counted(self) -> int:
        """Trials that used the budget: complete, pruned, or failed by the trainer (not re-run)."""
        return self.counts().finished

    def remaining(self) -> int:
        """Trials still to start for the budget to be met."""
        c = self.counts()
        return max(0, self.plan.budget - c.finished - c.running - c.waiting)

    def nothing_left(self, counts: storage.Counts | None = None) -> bool:
        c = counts or self.counts()
        if c.finished < self.plan.budget or c.running or c.waiting:
            return False
        return not (self.plan.retries and storage.retry_candidates(self.trials(), self.plan.retries))

    def worker_exited(self, what: str, log: str = "", pool: int = 0) -> None:
        """A worker or agent process ended with an error: counted towards the crash-loop rule.

        Rule (every engine): `max_deaths` deaths in a row with no trial counted in between
        means every new worker dies too; the sweep stops, FAILED, exit 1. `pool`: how many workers
        the pool has now (`--workers-per-gpu auto` grows it), which the rule grows with.
        """
        if diskspace.free_mb(self.plan.dir) < 1:  # it died writing its log or a record
            raise diskspace.DiskFull(self.plan.dir)
        self.max_deaths = max(self.max_deaths, 2 * pool)
        trials = self.trials()  # progress: a trial that finished; a config failed for killing its worker is a death
        counted = self.tally.count(trials).finished - sum(
            1 for t in trials if t.state == TrialState.FAIL and storage.reason(t) == KILLS_ITS_WORKER)
        if counted != self._counted_at_death:
            self._deaths, self._counted_at_death = 0, counted
        self._deaths += 1
        if self._deaths >= self.max_deaths and not self.aborting:
            self.aborting = (f"workers keep dying: {self._deaths} deaths in a row with no trial finished "
                             f"(last: {what}){'; see ' + log if log else ''}")
            raise HpoError(self.aborting)

    def refresh(self, workers: int, trials: list[FrozenTrial] | None = None,
                counts: storage.Counts | None = None) -> None:
        """Redraw progress (running trials of mirrored engines included) and keep `status.json`; `trials` and
        `counts` when the engine has just read them."""
        if self.progress is None:
            return
        if trials is None or counts is None:
            trials = self.trials()
            counts = self.tally.count(trials)
        trials = self.tally.view(trials, self.spec.direction)  # grows with the running trials, not the study
        self._publish(trials, counts)
        running = [SimpleNamespace(number=lv.number, state=TrialState.RUNNING, intermediate_values=lv.values,
                                   user_attrs={keys.WORKER: lv.worker, keys.CUDA_VISIBLE_DEVICES: lv.cuda})
                   for lv in self.live.values()]
        trials = [t for t in trials if not (self.backend.mirrored and t.state == TrialState.RUNNING)]
        self.progress.update([*trials, *running], workers, counts)

    def _publish(self, trials: list[FrozenTrial], counts: storage.Counts, final: bool = False) -> None:
        """`status.json` for `hpo status` and `hpo best` (hpo.status_file): rewritten when it changes, at most
        every second (every 5 s at 100,000 trials: building it reads them all); at the end with the store's
        fingerprint taken before that last read, so a later write to the study makes it stale."""
        size = counts.finished + counts.running + counts.waiting + counts.retried + counts.interrupted
        if not status_file.enabled() or (not final and time.monotonic() < self._published_at + max(1.0, size / 20000)):
            return
        self._published_at = time.monotonic()
        metric = self.spec.metric or "value"
        state = status.status(self.study, metric, trials, counts)
        text = json.dumps(state, default=str, sort_keys=True)
        if text == self._published and not final:
            return
        self._published = text
        _best_effort(status_file.write, self.plan.dir / status_file.NAME, state, state["best"],
                     self._store_print if final else None, final, self.study.user_attrs.get(keys.SPEC))

    def _publish_final(self) -> None:
        self._store_print = status_file.fingerprint(self.plan.storage, self.plan.name)
        trials = self.study.get_trials(deepcopy=False)
        self._publish(trials, storage.count(trials), final=True)

    # -- events of mirrored engines (Ray, W&B): the Session writes their Optuna trials --------
    def trial_started(self, key: Any, number: int | str, params: Mapping[str, Any], worker: str = "",
                      cuda: str = "", attrs: Mapping[str, Any] | None = None) -> None:
        user_attrs = {keys.BACKEND: self.plan.backend, keys.TRIAL: number, keys.WORKER: worker,
                      keys.CUDA_VISIBLE_DEVICES: cuda, keys.HOST: socket.gethostname(), keys.PID: os.getpid(),
                      **(attrs or {})}
        if key in self.live:  # started again without having ended: that attempt is lost
            self.trial_lost(key, "worker died", "started again before it ended")
        trial_id = mirror.start_trial(self.study, self.spec, params, user_attrs)
        self.live[key] = Live(trial_id, number, worker, cuda)

    def trial_updated(self, key: Any, run_id: str = "", worker: str = "", cuda: str = "") -> None:
        """What an engine learns of a running trial after its start: its child run (a new one replaces the
        last, which ends KILLED `paused`: Ray's HyperBand restarts a paused trial from its first step),
        and where it runs."""
        lv = self.live.get(key)
        if lv is None:
            return
        if run_id and run_id != lv.run_id:
            if lv.run_id:
                close_child(self.tracker, lv.run_id, Outcome(State.INTERRUPTED, reason="paused"))
            lv.run_id, lv.values = run_id, {}
            self.study._storage.set_trial_user_attr(lv.trial_id, keys.MLFLOW_RUN_ID, run_id)  # noqa: SLF001
            if lv.worker and not worker:  # the run was made where the engine placed it: name the slot it holds
                _best_effort(self.tracker.set_tags, run_id, {keys.WORKER: lv.worker})
        lv.worker, lv.cuda = worker or lv.worker, cuda or lv.cuda

    def trial_tags(self, key: Any, find: tuple[str, str] | None = None) -> dict[str, str]:
        """The tags of a running trial's child run (the trainer's own verdict); `find`: (tag, value) that
        names the run when the engine never learnt its id."""
        lv = self.live.get(key)
        if lv is not None and lv.run_id:
            return dict(self.tracker.get_run(lv.run_id).data.tags)
        if find is None:
            return {}
        runs = self.tracker.client.search_runs([self.experiment_id], f"tags.`{find[0]}` = '{find[1]}'",
                                               order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            return {}
        tags = dict(runs[0].data.tags)
        if lv is not None:  # ended before it reported (a program that failed at once): link its run now
            self.trial_updated(key, run_id=runs[0].info.run_id, worker=tags.get(keys.WORKER, ""),
                               cuda=tags.get(keys.CUDA_VISIBLE_DEVICES, ""))
        return tags

    def trial_reported(self, key: Any, step: int, value: float | None) -> None:
        lv = self.live.get(key)
        if lv is not None and value is not None:
            lv.values[int(step)] = float(value)
            mirror.report(self.study, lv.trial_id, step, value)

    def trial_finished(self, key: Any, outcome: Outcome, close: bool = False,
                       attrs: Mapping[str, Any] | None = None) -> None:
        """The trial's end state in the study; `close`: also amend its child run (the controller knows better)."""
        lv = self.live.pop(key, None)
        if lv is None:
            return
        if outcome.state in (State.COMPLETE, State.PRUNED) and outcome.value is None and lv.values \
                and not self.spec.multi:
            outcome = replace(outcome, value=lv.values[max(lv.values)])  # the report at its highest step
        if close and lv.run_id:
            close_child(self.tracker, lv.run_id, outcome)
        where = {keys.WORKER: lv.worker, keys.CUDA_VISIBLE_DEVICES: lv.cuda}  # an engine may learn them late
        mirror.finish_trial(self.study, lv.trial_id, outcome, {**where, **(attrs or {})})

    def trial_lost(self, key: Any, reason: str, detail: str = "") -> Outcome:
        """The process running it is gone (`worker died`) or was stopped (`interrupted`). Returns what the
        trial became: a config that killed its worker too often is failed for good (not `infra`)."""
        lv = self.live.get(key)
        if lv is not None and reason == "worker died":
            reason, detail = self._death_verdict(self.study._storage.get_trial(lv.trial_id).params,  # noqa: SLF001
                                                 reason, detail)
        outcome = lost(reason, detail)
        self.trial_finished(key, outcome, close=True)
        return outcome

    def _death_verdict(self, params: Mapping[str, Any], reason: str, detail: str) -> tuple[str, str]:
        """A config whose trials killed their worker `deaths_per_config` times (the kernel's OOM killer, a
        segfault, a trainer that kills its own process) is failed for good: it counts toward the budget and
        its grid point is not re-run, so the sweep ends with the other configs (`worker died (SIGKILL) x2 -
        out of memory?`). The crash-loop rule then counts deaths across different configs."""
        if not params:
            return reason, detail
        key = json.dumps(dict(params), sort_keys=True, default=str)
        deaths = 1 + sum(1 for t in self.trials() if t.state == TrialState.FAIL
                         and storage.reason(t) in ("worker died", KILLS_ITS_WORKER)
                         and json.dumps(t.params, sort_keys=True, default=str) == key)
        if deaths < self.deaths_per_config:
            return reason, detail
        sig = next((s for s in ("SIGKILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGTERM") if s in detail), "")
        hint = " — out of memory?" if sig == "SIGKILL" or "killed or crashed" in detail else ""
        return KILLS_ITS_WORKER, f"worker died{f' ({sig})' if sig else ''} ×{deaths}{hint}; last: {detail}"

    # -- trials of engines that write Optuna themselves (their workers did not finish them) ----
    def fail_trial(self, t: FrozenTrial, reason: str, detail: str = "") -> None:
        """FAIL a RUNNING trial (its worker is gone) and close its child run the same way."""
        store = self.study._storage  # noqa: SLF001
        if detail:
            store.set_trial_user_attr(t._trial_id, keys.ERROR, detail)  # noqa: SLF001
        run_ids = [t.user_attrs[keys.MLFLOW_RUN_ID]] if t.user_attrs.get(keys.MLFLOW_RUN_ID) else [
            # killed between creating its child run and naming it in the trial: find it by its tag
            r.info.run_id for r in self.tracker.children(self.experiment_id, self.parent_run_id, running_only=True)
            if r.data.tags.get(keys.TRIAL) == str(t.user_attrs.get(keys.TRIAL, t.number))]
        for run_id in run_ids[:1]:
            if run_id != t.user_attrs.get(keys.MLFLOW_RUN_ID):
                self.tracker.fill_params(run_id, t.params)  # its worker may have died before writing them too
                store.set_trial_user_attr(t._trial_id, keys.MLFLOW_RUN_ID, run_id)  # noqa: SLF001
        if reason == "worker died":
            reason, detail = self._death_verdict(t.params, reason, detail)
            if detail:
                store.set_trial_user_attr(t._trial_id, keys.ERROR, detail)  # noqa: SLF001
        storage.fail_trial(self.study, t._trial_id, reason)  # noqa: SLF001
        for run_id in run_ids:
            close_child(self.tracker, run_id, lost(reason, detail))

    def worker_gone(self, worker: str, pid: int, reason: str, detail: str = "") -> int:
        """A worker of this machine's pool ended or was killed: fail every trial it was running (a mirrored
        engine's by worker name, a trial it claimed from the study by its pid). Returns how many."""
        n = 0
        for key, lv in list(self.live.items()):
            if lv.worker == worker:
                self.trial_lost(key, reason, detail)
                n += 1
        host = socket.gethostname()
        for t in self._running_now():
            if t.user_attrs.get(keys.PID) == pid and t.user_attrs.get(keys.HOST) == host:
                self.fail_trial(t, reason, detail)
                n += 1
        return n

    def fail_stale(self) -> int:
        """Trials whose worker (on any machine) stopped sending heartbeats (RDB storages): failed, re-run.
        Asked every grace / 6 s, not per poll (one query of the running trials' heartbeats, storage.StaleTrials):
        a trial is stale only after a grace without a beat anyway."""
        now = time.monotonic()
        if now < self._stale_checked_at + max(1, storage.heartbeat_grace() // 6):
            return 0
        self._stale_checked_at = now
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        stale = set(self._stale.find(self.study, running))
        if not stale:
            return 0
        n = 0
        for t in self._running_now():
            if t._trial_id in stale:  # noqa: SLF001
                where = f"{t.user_attrs.get(keys.WORKER, '?')} on {t.user_attrs.get(keys.HOST, '?')}"
                self.fail_trial(t, "worker died", f"no heartbeat for {storage.heartbeat_grace()} s from {where}")
                n += 1
        return n

    def _running_now(self) -> list[FrozenTrial]:
        """The running trials as they are now, each read whole (a poll's read may hold a running trial's
        attributes from a few seconds ago: hpo.rdb_reads): who runs it, on which host, under which pid."""
        whole = getattr(self.study._storage, "read_all_next", None)  # noqa: SLF001 - an RDB's IncrementalCache
        if whole is not None:
            whole()
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def fail_orphans(self, reason: str, detail: str = "", live_pids: set[int] = frozenset()) -> int:
        n = 0
        for t in self._running_now():
            if orphans.is_local_orphan(t, set(live_pids)):
                self.fail_trial(t, reason, detail)
                n += 1
        return n

    # -- close ----------------------------------------------------------------------------
    def close(self, interrupted: bool, aborted: str | None) -> Result:
        """Every step is tried even when one fails (a full disk): what cannot be written now, the next
        `hpo run` repairs (orphaned trials and children are failed when it opens the sweep)."""
        reason = "interrupted" if interrupted else "worker died"
        detail = "the sweep was interrupted" if interrupted else "its worker is gone"
        for key in list(self.live):
            _best_effort(self.trial_lost, key, reason, detail)
        _best_effort(self.fail_orphans, reason)
        _best_effort(self._end_running_children, reason)
        if self._snapshotting is not None:
            self._snapshotting.join(timeout=60)
        if self.progress is not None:
            how = "interrupted (Ctrl-C)" if interrupted else f"stopped: {aborted}" if aborted else "done"
            _best_effort(self.progress.close, self.trials(), how)
        self.gpus.stop()
        result = self.summarize(interrupted, aborted)
        if self.tracker is not None:  # two workers that kept a model at the same moment may leave k + 1
            keep_too = {result.best_run_id} | {f["run_id"] for f in result.extra.get("pareto", ())}
            _best_effort(best_models.evict, self.tracker, self.experiment_id, self.parent_run_id, self._keep_policy(),
                         frozenset(r for r in keep_too if r))
        self._register(result)
        if self.plan.options.pack_cap and not self.packing and self.tracker is not None:
            _best_effort(self.tracker.set_tags, self.parent_run_id, {
                keys.WORKERS_PER_GPU: "1 (auto: the sweep ended before a worker's trials gave 1 s to measure)"})
        report = self._report()
        try:
            self._close_parent(result, {"report.html": report} if report else {})
            if report:
                _best_effort(self._one_report_file)
        except Exception as exc:  # noqa: BLE001 - the tracking server went away: say so, exit 1, resumable
            if not diskspace.is_disk_full(exc):
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                if not tracking.unreachable(exc):
                    raise
                self.unclosed = HpoError(
                    f"--tracking-uri: cannot close the parent run on {storage.mask(self.plan.tracking_uri)}: "
                    f"{storage.mask_text(first)}; the trials are in the study: run the same command once it "
                    "answers, to close it")
        _best_effort(tracking.checkpoint, self.plan.tracking_uri)
        _best_effort(self._publish_final)
        return result

    def _one_report_file(self) -> None:
        """runs/NAME/report.html and the parent's artifact copy of it (a local store) become one file on disk: a
        hard link, not a second 5 MB copy. Another disk, or a tracking server, keeps them apart."""
        from urllib.parse import unquote, urlparse

        uri = self.tracker.client.get_run(self.parent_run_id).info.artifact_uri
        if urlparse(uri).scheme not in ("", "file"):
            return
        artifact = Path(unquote(urlparse(uri).path)) / "report.html"
        report = self.plan.dir / "report.html"
        if artifact.is_file() and report.is_file() and artifact.read_bytes() == report.read_bytes():
            tmp = report.with_suffix(".html.link")
            tmp.unlink(missing_ok=True)
            os.link(artifact, tmp)
            tmp.replace(report)

    def _mark_orphan_children(self, settle_s: float = 60.0) -> int:
        """Child runs that no trial names (a stop between creating the run and recording it in the trial):
        closed if still RUNNING (and older than `settle_s`: a live worker on another machine is about to
        name its own) and tagged `hpo.orphan`, so the MLflow UI and every count can tell them apart."""
        named = {t.user_attrs.get(keys.MLFLOW_RUN_ID) for t in self.trials()}
        now_ms, n = time.time() * 1000, 0
        for run in self.tracker.children(self.experiment_id, self.parent_run_id):
            if run.info.run_id in named or run.data.tags.get(ORPHAN_TAG) == "true":
                continue
            if run.info.status == "RUNNING":
                if now_ms - run.info.start_time < settle_s * 1000:
                    continue
                close_child(self.tracker, run.info.run_id, lost("worker died", "no trial names this run"),
                            {ORPHAN_TAG: "true"})
            else:
                self.tracker.set_tags(run.info.run_id, {ORPHAN_TAG: "true"})
            n += 1
        return n

    def _end_running_children(self, reason: str) -> None:
        """Close the child runs still RUNNING at the sweep's end. One whose trial has already ended in the study
        (a Ray trial that reached max_t, its worker stopped by the interrupt before it closed its own run) ends
        as that trial did; the rest end `reason`."""
        ended = {t.user_attrs.get(keys.MLFLOW_RUN_ID): t for t in self.trials() if t.state.is_finished()}
        for run in self.tracker.children(self.experiment_id, self.parent_run_id, running_only=True):
            t = ended.get(run.info.run_id)
            if t is not None and t.state == TrialState.COMPLETE:
                outcome = Outcome(State.COMPLETE, storage.primary(t))
            elif t is not None and t.state == TrialState.PRUNED:
                outcome = Outcome(State.PRUNED, reason=t.user_attrs.get(keys.REASON) or "pruned")
            else:
                outcome = lost(reason)
            close_child(self.tracker, run.info.run_id, outcome)

    def summarize(self, interrupted: bool, aborted: str | None) -> Result:
        result = summary.summarize(self.plan, self.trials(), self.parent_run_id, interrupted, aborted)
        result.extra["experiment_id"] = self.experiment_id
        if self.spec.multi:
            result.extra["pareto"] = storage.pareto(self.study, self.spec.metric_names)
        if self.gpus.active:
            result.extra["gpus"] = self.gpus.summary()
        if self.packing:
            result.extra["packing"] = [asdict(d) for d in self.packing]
        return result

    def packed(self, decisions: list) -> None:
        """`--workers-per-gpu auto` decided (hpo.packing): on the parent run now, and in the JSON line at the end."""
        from hpo.packing import tags

        self.packing = list(decisions)
        _best_effort(self.tracker.set_tags, self.parent_run_id, tags(self.packing))

    def _keep_k(self, study: optuna.Study) -> int:
        """--keep-models, else what the sweep kept when it last ran (a resume keeps its K), else 3."""
        k = self.plan.options.keep_models
        if k is None:
            k = study.user_attrs.get(keys.KEEP_MODELS, best_models.DEFAULT_K)
        if study.user_attrs.get(keys.KEEP_MODELS) != k:
            study.set_user_attr(keys.KEEP_MODELS, k)
        self.keep_k = int(k)
        return self.keep_k

    def _keep_policy(self) -> best_models.Policy:
        return best_models.Policy(self.keep_k, self.spec.metric, self.spec.goal)

    def _register(self, result: Result) -> None:
        """`--register NAME`: the best model becomes a version of NAME (not after Ctrl-C or an abort)."""
        from hpo import registry

        name = self.plan.options.register
        if not name or result.interrupted or result.aborted or self.tracker is None:
            return
        try:
            done = registry.register(self.tracker, name, self.experiment_id, self.plan.name, result.best_run_id,
                                     self.spec.metric, self.spec.goal)
            result.extra["registered"] = done.fields()
        except registry.RegistryFailed as exc:
            result.extra["register_error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a registry that fails (a full disk too): the results stand
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            result.extra["register_error"] = f"--register: {type(exc).__name__}: {storage.mask_text(first)}"

    def _close_parent(self, result: Result, artifacts: dict[str, str]) -> None:
        summary.close_parent(self.tracker, self.plan, result, artifacts)

    def _report(self) -> str | None:
        """runs/NAME/report.html (`hpo report`), written at every end; its text goes on the parent run."""
        if self.plan.options.no_report or self.study is None:
            return None
        try:
            from hpo import htmlreport

            return htmlreport.write(self.study, self.spec, self.plan.dir).read_text(encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - the sweep's results stand without their pictures
            if not diskspace.is_disk_full(exc):
                print(f"hpo: warning: report: {type(exc).__name__}: {storage.mask_text(str(exc))}", file=sys.stderr)
            return None


def _import_quietly(*names: str) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the report says what is missing, later
            pass


def _best_effort(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - closing goes on; a full disk is reported by the caller
        if not diskspace.is_disk_full(exc):
            print(f"hpo: warning: {getattr(fn, '__name__', fn)}: {type(exc).__name__}: {storage.mask_text(str(exc))}",
                  file=sys.stderr)


def _first_ctrl_c(signum, frame):  # noqa: ARG001
    # The clean-up that follows must not be cut short by a second Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _ctrl_z(signum, frame):  # noqa: ARG001
    """Ctrl-Z pauses the whole sweep: the workers (in sessions of their own) and then the controller;
    `fg` (SIGCONT) continues the controller here, which continues the workers with their leases renewed."""
    from hpo import worker_pool

    stopped = worker_pool.pause_workers()
    os.kill(os.getpid(), signal.SIGSTOP)  # not SIGTSTP: a process group without a terminal would ignore it
    worker_pool.resume_workers(stopped)


def _stdio_closed() -> bool:
    """stdout or stderr is a pipe whose reader has gone (`| head`); from then on both write to /dev/null so
    that closing the sweep, which prints, runs to its end."""
    import select

    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            if any(ev & select.POLLERR for _, ev in poller.poll(0)):
                closed = True
        except (OSError, ValueError):
            continue
    if closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
    return closed


def _sigterm_as_ctrl_c(signum, frame):  # noqa: ARG001
    # Through SIGINT, so an engine that handles Ctrl-C itself (Ray Tune) stops the same way.
    signal.raise_signal(signal.SIGINT)
