"""The controller's reads of an RDB study: only what changed since its last poll.

Optuna's `_CachedStorage` (around every RDBStorage a Study holds) keeps each finished trial once read, but reads
every unfinished trial again, whole, at every call: its params, values, attributes and intermediate values, each
an `IN` list over a child table. The controller asks once per poll, and a sweep's unfinished trials are its running
trials plus its queue, so at 256 running a poll read ~150,000 rows (PostgreSQL chose sequential scans of the child
tables for those lists: bench/RESULTS.md, "At scale").

`IncrementalCache` is that cache with a cheaper question first: the states of the trials that may have changed
(one query of the `trials` table by its primary key: `states`). A trial is then read whole only when it is new,
when its state changed, or, while it runs, again once it is `RUNNING_EVERY_S` old, at most one running trial in
`RUNNING_MANY` per poll, the oldest first (so a poll's reads stay a small part of the running trials: at 256
running, 5 a poll, each re-read every ~25 s at 2 polls/s; the progress table shows a running trial's attributes
and intermediate values up to that old). A finished trial never
changes, and a waiting one changes only when a worker takes it. Workers take waiting trials in id order (hpo's
`storage.claim`, Optuna's own `_pop_waiting_trial_id`; a worker that loses a race takes the next), so a poll asks the
states of the running trials, the `WAITING_WINDOW` lowest waiting ones (twice as many as the last poll saw taken,
if more) and the trials newer than any it knows, not of the whole queue (hpo queues a sweep's whole budget: at
256 running, a queue of thousands). Every `ALL_STATES_EVERY_S` a poll asks every unfinished trial's state: a
trial taken out of order is seen then at the latest. So after every poll every trial that is not running is what
a full read gives, but for a waiting trial taken beyond the window, which may still show WAITING for that long.
What must see a running trial as it is now (a dead worker's trials, by pid) asks `read_all_next()` first.

A worker's claim (`storage.claim`) asks `waiting` for the lowest queued ids, a few at a time, where Optuna's pop
reads every unfinished trial whole through its cache first; `cache_claimed` then puts the trial it took into that
cache, which writes params only for trials it has read. Optuna's private names used here are pinned in
tests/test_port.py.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from hpo.rdb_whole import reading
from hpo.storage_outage import retry

RUNNING_EVERY_S = 5.0  # a running trial is read whole again once this old...
RUNNING_MANY = 50  # ...and at most max(2, running // RUNNING_MANY) of them a poll
WAITING_WINDOW = 32  # the lowest waiting trials whose states a poll asks (workers take them in id order)
ALL_STATES_EVERY_S = 30.0  # how often a poll asks the state of every unfinished trial
PROBES_ONLY = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")  # PostgreSQL: states by index probes


def states(rdb: RDBStorage, study_id: int, ids: set[int], above: int) -> tuple[list[tuple[int, TrialState]], int]:
    """(trial_id, state) of the trials `ids` and of every trial of the study with an id above `above`, and how many
    rows the database returned for them.

    On PostgreSQL, `ids` are asked one by one through the primary key (a join with `unnest` of their array: an index
    probe each, whatever the planner's statistics say; an `IN` list of hundreds of ids, or an `OR`, it may answer
    by scanning the table), and the trials above `above` as a range. Elsewhere (SQLite, MySQL) as a range of the
    primary key from the oldest of `ids` to the newest (`ids` are mostly the newest trials), the few much older
    ones (a trial running for hours) by id, and the range above `above` when it does not join the first."""
    asked = sorted(i for i in ids if i <= above)
    t = models.TrialModel
    new = sqlalchemy.select(t.trial_id, t.state).where(t.study_id == study_id, t.trial_id > above)
    first: list[Any] = []  # statements of the read's transaction before its queries
    if asked and rdb.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        each = sqlalchemy.func.unnest(sqlalchemy.literal(asked, ARRAY(sqlalchemy.Integer))).table_valued(
            "id").render_derived(name="asked")
        queries = [sqlalchemy.union_all(sqlalchemy.select(t.trial_id, t.state).select_from(
            each.join(t, t.trial_id == each.c.id)).where(t.study_id == study_id), new)]
        # By primary key whatever the count: past ~800 ids the planner's costs favour a hash join over a scan of
        # the whole table (every trial of the study, every ALL_STATES_EVERY_S: bench/RESULTS.md, "At scale").
        first = [sqlalchemy.text(f"SET LOCAL {plan} = off") for plan in PROBES_ONLY]
    else:
        hi = asked[-1] if asked else above
        # The range from the oldest id may hold other trials between: keep it within a few times what is asked.
        span = 4 * len(asked) + 256
        old = [i for i in asked if i < hi - span]
        lo = min([i for i in asked if i >= hi - span] + [above + 1])
        near = sqlalchemy.select(t.trial_id, t.state).where(t.study_id == study_id, t.trial_id >= lo)
        if hi < above:  # the trials between (waiting ones nobody asked about) are not read
            near = sqlalchemy.union_all(near.where(t.trial_id <= hi), new)
        queries = [near] + ([sqlalchemy.select(t.trial_id, t.state).where(t.trial_id.in_(old))] if old else [])

    def read() -> tuple[list[tuple[int, TrialState]], int]:
        with reading(rdb) as session:
            for statement in first:
                session.execute(statement)
            got = [row for query in queries for row in session.execute(query).all()]
        return [(int(i), s) for i, s in got if i > above or i in ids], len(got)

    return retry(read, getattr(rdb, "hpo_label", "--storage"))


def waiting(rdb: RDBStorage, study_id: int, above: int, limit: int) -> list[int]:
    """The ids of the study's `limit` lowest WAITING trials with an id above `above` (the next a worker takes:
    `storage.claim`; Optuna's own pop reads every unfinished trial whole first)."""
    t = models.TrialModel
    query = (sqlalchemy.select(t.trial_id).where(t.study_id == study_id, t.state == TrialState.WAITING,
                                                 t.trial_id > above).order_by(t.trial_id).limit(limit))

    def read() -> list[int]:
        with reading(rdb) as session:
            return [int(i) for i in session.execute(query).scalars()]

    return retry(read, getattr(rdb, "hpo_label", "--storage"))


def cache_claimed(cache: _CachedStorage, study_id: int, trial: FrozenTrial) -> None:
    """Put a trial just claimed (as its `optuna.Trial` read it) into Optuna's cache, which writes a trial's params
    only for trials it has read. As unfinished: the cache reads it again at its next read. A cache that never read
    the study starts its record of it here, as its own first read would (it then reads the rest whole)."""
    with cache._lock:  # noqa: SLF001
        study = cache._studies.setdefault(study_id, _StudyInfo())  # noqa: SLF001
        cache._add_trials_to_cache(study_id, [trial])  # noqa: SLF001
        study.unfinished_trial_ids.add(trial._trial_id)  # noqa: SLF001


class IncrementalCache(_CachedStorage):
    """Optuna's cache of an RDBStorage that reads a trial whole only when it may have changed (module doc)."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._read_at: dict[int, float] = {}  # unfinished trial_id -> when it was last read whole (monotonic)
        self._whole = True  # the next read is Optuna's own: every unfinished trial, whole
        self._all_states_at = 0.0  # when a poll last asked every unfinished trial's state (monotonic)
        self._taken = 0  # waiting trials the last poll saw taken: the next one asks twice as many
        # what it asked for (tests/test_rdb_reads.py)
        self.reads = {"whole": 0, "states": 0, "state_rows": 0, "trials": 0}

    def read_all_next(self) -> None:
        """The next read takes every unfinished trial whole (as Optuna's cache does at every read)."""
        with self._lock:
            self._whole = True

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        with self._lock:  # released before Optuna's read, which takes it
            whole, self._whole = self._whole, False
        if whole or study_id not in self._studies:
            super()._read_trials_from_remote_storage(study_id)
            with self._lock:
                self.reads["whole"] += 1
                now = self._all_states_at = time.monotonic()  # a whole read saw every state
                self._read_at.update(dict.fromkeys(self._studies[study_id].unfinished_trial_ids, now))
            return
        with self._lock:
            study = self._studies[study_id]
            unfinished = set(study.unfinished_trial_ids)
            known = max(unfinished | {study.last_finished_trial_id})  # every trial up to it is in the cache
            now = time.monotonic()
            if now - self._all_states_at >= ALL_STATES_EVERY_S:
                self._all_states_at, ask = now, unfinished
            else:
                ask = self._to_ask(study, unfinished)
        rows, returned = states(self._backend, study_id, ask, known)
        now = time.monotonic()
        with self._lock:
            self.reads["states"] += 1
            self.reads["state_rows"] += returned
            was = {i: self._state(study, i) for i in unfinished}
            self._taken = sum(1 for i, state in rows if was.get(i) == TrialState.WAITING != state)
            running = sum(1 for state in was.values() if state == TrialState.RUNNING)
            need = {i for i, state in rows if was.get(i, self._state(study, i)) != state}
            due = sorted((self._read_at.get(i, 0.0), i) for i, state in rows if state == TrialState.RUNNING
                         and i not in need and now - self._read_at.get(i, 0.0) >= RUNNING_EVERY_S)
            need |= {i for _, i in due[:max(2, running // RUNNING_MANY)]}
        if not need:
            return
        # Optuna's read takes the ids asked for and every id above the last one: the newest this cache knows of
        trials = self._backend._get_trials(study_id, states=None, included_trial_ids=need,  # noqa: SLF001
                                           trial_id_greater_than=max([known, *need]))
        with self._lock:
            self.reads["trials"] += len(trials)
            self._add_trials_to_cache(study_id, trials)
            for trial in trials:
                tid = trial._trial_id  # noqa: SLF001
                if not trial.state.is_finished():
                    study.unfinished_trial_ids.add(tid)
                    self._read_at[tid] = now
                    continue
                study.last_finished_trial_id = max(study.last_finished_trial_id, tid)
                study.unfinished_trial_ids.discard(tid)
                self._read_at.pop(tid, None)

    def _to_ask(self, study: _StudyInfo, unfinished: set[int]) -> set[int]:
        """The running trials and the lowest waiting ones: the next a worker takes (module doc)."""
        waiting = sorted(i for i in unfinished if self._state(study, i) == TrialState.WAITING)
        window = max(WAITING_WINDOW, 2 * self._taken)
        return (unfinished - set(waiting)) | set(waiting[:window])

    def _state(self, study: _StudyInfo, trial_id: int) -> TrialState | None:
        where: Any = self._trial_id_to_study_id_and_number.get(trial_id)
        cached = study.trials.get(where[1]) if where is not None else None
        return None if cached is None else cached.state
