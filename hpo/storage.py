"""Optuna storage: where it lives, how workers take trials, how the budget is counted.

The budget is a queue. The controller enqueues one WAITING trial per unit of
budget (`enqueue_trial`, empty params unless it is a grid point); a worker takes
one by moving it WAITING -> RUNNING, which the storage does atomically for the
journal file and for RDBs alike. So `--trials 7` over 3 workers (or over several
machines) gives exactly 7 trials, and a worker stops when the queue is empty.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from hpo import keys
from hpo.errors import HpoError, MissingDependency, UsageError
from hpo.journal import FlockLock, SafeJournalFileBackend
from hpo.storage_outage import PatientRDBStorage
from hpo.redact import RDB_SCHEMES, is_rdb, mask, mask_text  # noqa: F401 - re-exported: callers import them from here
from hpo.trial import INFRA_REASONS, KILLS_ITS_WORKER

def open_storage(url: str, incremental: bool = False) -> BaseStorage:
    """A journal file path (default, safe for many local processes) or an RDB URL. `incremental`: an RDB study's
    reads ask only for what changed since the last (hpo.rdb_reads: the controller, which reads once per poll)."""
    if is_rdb(url):
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            # Heartbeats let the controller notice a worker on another machine that died mid-trial.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                store = PatientRDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval_s(),
                                          grace_period=heartbeat_grace())
                store.hpo_label = f"--storage {mask(url)}"
            if incremental:
                from hpo.rdb_reads import IncrementalCache

                return IncrementalCache(store)
            return store
        except ImportError:
            raise MissingDependency("psycopg[binary]", f"the storage {mask(url)}") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's errors: one line, password masked
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HpoError(f"--storage: cannot open {mask(url)}: {mask(first)}") from None
    if "://" in url:
        raise UsageError(f"--storage: unknown scheme in {mask(url)}; use a journal file path or an RDB URL")
    path = Path(url).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(SafeJournalFileBackend(str(path), lock_obj=FlockLock(str(path) + ".flock")))


def heartbeat_grace() -> int:
    """Seconds without a heartbeat after which an RDB trial's worker counts as dead: the workers' lease grace
    (hpo.liveness), in whole seconds as Optuna's RDBStorage takes it."""
    from hpo.liveness import grace_s

    return max(1, round(grace_s()))


def heartbeat_interval_s() -> int:
    """Seconds between a worker's heartbeats: half the grace, Optuna's own ratio (its `grace_period` defaults to
    twice the interval). One beat per running trial per interval, never one per trial start: a worker of
    1-s trials writes 2 heartbeats a minute (it wrote one per trial, ~50), and a trial shorter than the
    interval writes none."""
    return max(1, heartbeat_grace() // 2)


class StaleTrials:
    """RUNNING trials whose worker (on any machine) stopped beating (RDB storages only), as the controller sees them.

    A trial whose last heartbeat is older than the grace (the database's clock on both sides, as Optuna's own
    `_get_stale_trial_ids` judges it). A trial a worker took from hpo's queue that has no heartbeat yet (the worker
    beats at intervals, not when a trial starts) is stale once this controller has seen it so for the grace plus
    an interval, on its own monotonic clock: no worker's clock or time zone is compared with another's.
    Optuna's `fail_stale_trials` is not used to fail them because a stale trial's MLflow child run must be
    closed with it, in one place (Session.fail_trial); the journal storage has no heartbeat at all
    (hpo.liveness leases cover every storage)."""

    def __init__(self) -> None:
        self._unbeaten: dict[int, float] = {}  # trial id -> when this controller first saw it RUNNING unbeaten

    def find(self, study: optuna.Study, running: list[FrozenTrial]) -> list[int]:
        rdb = rdb_of(study._storage)  # noqa: SLF001
        if rdb is None or not rdb.get_heartbeat_interval():
            return []
        taken = {t._trial_id for t in running if keys.QUEUED in t.user_attrs}  # noqa: SLF001 - hpo workers' trials
        if not taken:
            self._unbeaten.clear()
            return []
        now_db, beats = heartbeats(rdb, sorted(taken))
        grace, now = heartbeat_grace(), time.monotonic()
        self._unbeaten = {i: self._unbeaten.get(i, now) for i in taken if i not in beats}
        stale = [i for i, beat in beats.items() if (now_db - beat).total_seconds() > grace]
        return sorted(stale + [i for i, seen in self._unbeaten.items() if now - seen > grace + heartbeat_interval_s()])


def rdb_of(store: BaseStorage) -> Any:
    """The RDBStorage under Optuna's cache (a Study's storage), or None for other storages."""
    from optuna.storages import RDBStorage

    inner = getattr(store, "_backend", store)  # _CachedStorage keeps the RDBStorage as `_backend`
    return inner if isinstance(inner, RDBStorage) else None


def heartbeats(rdb: Any, trial_ids: list[int]) -> tuple[Any, dict[int, Any]]:
    """(the database's now, {trial id: its last heartbeat}) for those trials: one query on Optuna's
    `trial_heartbeats` (its `TrialHeartbeatModel`), waiting out an outage as every hpo storage call does."""
    import sqlalchemy
    from optuna.storages._rdb.models import TrialHeartbeatModel  # private: pinned by tests/test_port.py

    from hpo.storage_outage import retry

    def read() -> tuple[Any, dict[int, Any]]:
        with rdb.engine.connect() as conn:
            now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            rows = conn.execute(sqlalchemy.select(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat)
                                .where(TrialHeartbeatModel.trial_id.in_(trial_ids))).all()
        return now.replace(tzinfo=None), {tid: beat.replace(tzinfo=None) for tid, beat in rows}

    return retry(read, getattr(rdb, "hpo_label", "--storage"))


def _heartbeat_interval(store: BaseStorage) -> int | None:
    getter = getattr(store, "get_heartbeat_interval", None)  # RDBStorage and Optuna's cache around it
    return getter() if getter else None


class Heartbeat:
    """While a trial runs, its heartbeat is recorded every interval (RDB storages; a no-op elsewhere).

    One thread per process beats every trial of that process then running (a worker runs one at a time; the
    scale benchmark's simulated workers share a process), first one interval after the trial started."""

    _lock = threading.Lock()
    _running: dict[int, BaseStorage] = {}  # trial id -> its storage
    _thread: threading.Thread | None = None

    def __init__(self, study: optuna.Study, trial_id: int):
        self._store, self._trial_id = study._storage, trial_id  # noqa: SLF001
        self._interval = _heartbeat_interval(self._store)

    def __enter__(self) -> "Heartbeat":
        if self._interval:
            cls = type(self)
            with cls._lock:
                cls._running[self._trial_id] = self._store
                if cls._thread is None or not cls._thread.is_alive():
                    cls._thread = threading.Thread(target=cls._beat, args=(self._interval,), daemon=True,
                                                   name="hpo-heartbeat")
                    cls._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with type(self)._lock:
            type(self)._running.pop(self._trial_id, None)

    @classmethod
    def _beat(cls, interval: int) -> None:
        while True:
            time.sleep(interval)
            with cls._lock:
                running = list(cls._running.items())
            for trial_id, store in running:
                if trial_id not in cls._running:  # ended meanwhile: a beat now would be for a finished trial
                    continue
                try:
                    store.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried; a long outage marks the trial stale
                    pass


def require_existing(url: str) -> None:
    """For commands that read a sweep: a journal file or SQLite file that is not there is a typo."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None if is_rdb(url) else url
    if path is not None and not Path(path).expanduser().is_file():
        raise UsageError(f"--storage: no sweep at {mask(url)}; run `hpo run` first or check the path")


def reason(t: FrozenTrial) -> str | None:
    return t.user_attrs.get(keys.REASON)


def trainer_params(t: FrozenTrial) -> dict[str, Any]:
    """The values the trainer got (without the uniform `NAME~u` variables Optuna sampled for them)."""
    return {k: v for k, v in t.params.items() if not k.endswith("~u")}


def counts_toward_budget(t: FrozenTrial) -> bool:
    """Finished for a reason of its own (complete, pruned, or failed by the trainer)."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and reason(t) not in INFRA_REASONS


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0  # infrastructure failures (a dead or hung worker): re-run, not counted
    running: int = 0
    waiting: int = 0
    interrupted: int = 0  # stopped by Ctrl-C (or a stop): the same command runs them again, not counted

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def lost(self) -> str:
        """", 2 retried, 1 interrupted": the trials that did not use the budget, for a line of counts."""
        return "".join(f", {n} {what}" for n, what in ((self.retried, "retried"), (self.interrupted, "interrupted")) if n)


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of failed trials that a later trial re-runs (`--retries`)."""
    return {t.user_attrs[keys.RETRY_OF] for t in trials if keys.RETRY_OF in t.user_attrs}


def _failed_as(t: FrozenTrial, retried: set[int]) -> str:
    """Which count a FAIL trial is in: failed (used the budget), interrupted, or retried (run again)."""
    if counts_toward_budget(t) and t.number not in retried:
        return "failed"
    return "interrupted" if reason(t) == "interrupted" else "retried"


def count(trials: Iterable[FrozenTrial]) -> Counts:
    trials = list(trials)
    retried = retried_numbers(trials)
    c = dict.fromkeys(("complete", "pruned", "failed", "retried", "running", "waiting", "interrupted"), 0)
    for t in trials:
        if t.state == TrialState.FAIL:
            c[_failed_as(t, retried)] += 1
        else:
            c[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]] += 1
    return Counts(**c)


class Tally:
    """`count(trials)` of one study, kept up to date without rereading the whole study at every poll.

    A COMPLETE or PRUNED trial never changes again, so each is read once. Failed, running and
    waiting trials are read at every call (a failure's reason and whether it is re-run can still
    change), as are trials new since the last call. Trials come in number order (`get_trials`);
    anything else falls back to a full count.
    """

    def __init__(self) -> None:
        self._seen = 0
        self._open: list[int] = []  # indexes of trials not yet COMPLETE or PRUNED
        self._settled = {"complete": 0, "pruned": 0}
        self._retried: set[int] = set()  # numbers of failed trials that a later trial re-runs
        self.settled: list[int] = []  # indexes that became COMPLETE or PRUNED since the last `view`
        self.whole = True  # the count started again: the next `view` is of every trial
        self.best: FrozenTrial | None = None  # the best COMPLETE trial so far (`view`)
        self._any_done: FrozenTrial | None = None

    def view(self, trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
        """What a live view needs of `trials` (as last counted), in time that grows with the running trials, not
        the study: every trial not yet COMPLETE or PRUNED, those that became so since the last view, and the best
        so far (a finished trial never changes). Every trial when the count had to start again."""
        whole, self.whole = self.whole, False
        settled, self.settled = self.settled, []
        if whole or len(trials) < self._seen:
            self.best = best_trial(trials, direction)
            self._any_done = next((t for t in trials if t.state == TrialState.COMPLETE and t.values), None)
            return trials
        changed = [trials[i] for i in (*self._open, *settled)]
        self.best = best_trial([t for t in (self.best, *changed) if t is not None], direction)
        if self._any_done is None:  # one complete trial: a live view tells a multi-objective sweep by it
            self._any_done = next((t for t in changed if t.state == TrialState.COMPLETE and t.values), None)
        shown = {t.number for t in changed}
        for t in (self.best, self._any_done):
            if t is not None and t.number not in shown:
                changed.append(t)
                shown.add(t.number)
        return changed

    def count(self, trials: list[FrozenTrial]) -> Counts:
        if len(trials) < self._seen:
            self.__init__()  # another study, or a storage that lost trials: start again
        check = [*self._open, *range(self._seen, len(trials))]
        if any(trials[i].number != i for i in check):
            self.__init__()
            return count(trials)
        self.whole = self.whole or self._seen == 0
        for i in range(self._seen, len(trials)):
            if keys.RETRY_OF in trials[i].user_attrs:
                self._retried.add(trials[i].user_attrs[keys.RETRY_OF])
        self._seen, still = len(trials), []
        c = dict.fromkeys(("failed", "retried", "running", "waiting", "interrupted"), 0)
        for i in check:
            t = trials[i]
            if t.state == TrialState.COMPLETE:
                self._settled["complete"] += 1
                self.settled.append(i)
            elif t.state == TrialState.PRUNED:
                self._settled["pruned"] += 1
                self.settled.append(i)
            else:
                still.append(i)
                if t.state == TrialState.FAIL:
                    c[_failed_as(t, self._retried)] += 1
                else:
                    c[{TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[t.state]] += 1
        self._open = still
        return Counts(**{**c, **self._settled})


def primary(t: FrozenTrial) -> float | None:
    """A trial's value; for a multi-objective trial, its first objective's (FrozenTrial.value raises there)."""
    return t.values[0] if t.values else None


def best_trial(trials: Iterable[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The best COMPLETE trial for `direction` ("maximize" / "minimize"), or None; None for a multi-objective
    study too (it has a Pareto front, `pareto`, not one best)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not done or len(done[0].values) > 1:
        return None
    return (max if direction == "maximize" else min)(done, key=lambda t: t.value)


def pareto(study: optuna.Study, names: list[str]) -> list[dict[str, Any]]:
    """A multi-objective study's Pareto front (Optuna's `best_trials`): trial, MLflow run, values, params."""
    return [{"trial": t.user_attrs.get(keys.TRIAL, t.number), "run_id": t.user_attrs.get(keys.MLFLOW_RUN_ID),
             "values": dict(zip(names, t.values)), "params": trainer_params(t)}
            for t in sorted(study.best_trials, key=lambda t: t.number)]


def fill_queue(study: optuna.Study, budget: int, grid: list[dict[str, Any]] | None = None,
               tally: Tally | None = None, trials: list[FrozenTrial] | None = None,
               counts: Counts | None = None) -> int:
    """Enqueue trials until finished + queued + running == budget; return how many were added.
    `trials` and their `counts`, when the caller has just read them, save reading the study again."""
    if trials is None or counts is None:
        trials = study.get_trials(deepcopy=False)
        counts = tally.count(trials) if tally is not None else count(trials)
    c = counts
    missing = budget - c.finished - c.running - c.waiting
    if missing <= 0:
        return 0
    if grid is None:
        for _ in range(missing):
            study.enqueue_trial({}, user_attrs={keys.QUEUED: True})
        return missing
    retried = retried_numbers(trials)
    taken = {json.dumps(t.params, sort_keys=True) for t in trials
             if (counts_toward_budget(t) and t.number not in retried) or t.state == TrialState.RUNNING}
    # A trial taken but not yet started has no params: its grid point is in its attrs.
    taken |= {t.user_attrs.get(keys.GRID_POINT) for t in trials
              if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    fresh = [p for p in grid if json.dumps(p, sort_keys=True) not in taken][:missing]
    for point in fresh:
        study.enqueue_trial(point, user_attrs={keys.QUEUED: True, keys.GRID_POINT: json.dumps(point, sort_keys=True)})
    return len(fresh)


def queue_retries(study: optuna.Study, retries: int) -> int:
    """Re-queue each failed trial's params (trainer error, dead worker, Ctrl-C) up to `retries` times.

    The new trial links to the original through the user attr `hpo.retry_of`. Optuna's
    `RetryFailedTrialCallback` re-queues only trials failed for a missing heartbeat (RDB storages), so it
    misses trainer errors, interrupts and the journal storage; this keeps its attr's meaning (`retry_of`).
    """
    if retries <= 0:
        return 0
    added = 0
    for t in retry_candidates(study.get_trials(deepcopy=False), retries):
        attempt = int(t.user_attrs.get(keys.ATTEMPT, 0))
        attrs = {keys.QUEUED: True, keys.RETRY_OF: t.number, keys.ATTEMPT: attempt + 1}
        if keys.GRID_POINT in t.user_attrs:
            attrs[keys.GRID_POINT] = t.user_attrs[keys.GRID_POINT]
        study.enqueue_trial(dict(t.params), user_attrs=attrs)
        added += 1
    return added


def retry_candidates(trials: list[FrozenTrial], retries: int) -> list[FrozenTrial]:
    """Failed trials (trainer error, dead worker, Ctrl-C) not yet re-run `retries` times."""
    done = retried_numbers(trials)
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in done and t.params
            and int(t.user_attrs.get(keys.ATTEMPT, 0)) < retries and reason(t) != KILLS_ITS_WORKER]


CLAIM_ASKS = 32  # WAITING ids a claim asks an RDB for at a time (more when other workers took them meanwhile)


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one WAITING trial (atomic WAITING -> RUNNING) or None when the queue is empty.

    Unlike `study.ask()`, this never creates a trial, so the budget holds
    across workers and machines.
    """
    from optuna.storages._cached_storage import _CachedStorage

    from hpo import rdb_reads

    storage = study._storage  # noqa: SLF001 - the public Study has no "pop or nothing"
    for trial_id in _waiting_ids(study):
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                trial = optuna.Trial(study, trial_id)
                if isinstance(storage, _CachedStorage):  # it was not read through the cache (_waiting_ids)
                    rdb_reads.cache_claimed(storage, study._study_id, trial._cached_frozen_trial)  # noqa: SLF001
                return trial
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker took it and finished it meanwhile
            continue
    return None


def _waiting_ids(study: optuna.Study) -> Iterator[int]:
    """The study's WAITING trial ids, lowest first. On an RDB asked a few at a time from the `trials` table (a
    cache's read takes every unfinished trial whole: at a queue of thousands, the workers' largest read); on a
    journal from its replay, which reads only what was appended."""
    from hpo import rdb_reads

    storage, sid = study._storage, study._study_id  # noqa: SLF001
    rdb = rdb_of(storage)
    if rdb is None:
        yield from (t._trial_id for t in storage.get_all_trials(sid, deepcopy=False, states=(TrialState.WAITING,)))  # noqa: SLF001
        return
    above = -1
    while ids := rdb_reads.waiting(rdb, sid, above, CLAIM_ASKS):
        yield from ids
        above = ids[-1]


def fail_trial(study: optuna.Study, trial_id: int, why: str) -> bool:
    """Mark a RUNNING trial FAIL with a reason (used for trials whose worker died)."""
    storage = study._storage  # noqa: SLF001
    storage.set_trial_user_attr(trial_id, keys.REASON, why)
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except RuntimeError:  # finished meanwhile
        return False
