"""The controller's reads of an RDB study: only what changed since its last poll.

Optuna's `_CachedStorage` (around every RDBStorage a Study holds) keeps each finished trial once read, but reads
every unfinished trial again, whole, at every call: its params, values, attributes and intermediate values, each
an `IN` list over a child table. The controller asks once per poll, and a sweep's unfinished trials are its running
trials plus its queue, so at 256 running a poll read ~150,000 rows (PostgreSQL chose sequential scans of the child
tables for those lists: bench/RESULTS.md, "At scale").

`IncrementalCache` is that cache with a cheaper question first: the state of each unfinished trial and of any new
trial (one query of the `trials` table, by primary key). A trial is then read whole only when it is new, when its
state changed, or, while it runs, once every `RUNNING_EVERY_S`: a waiting trial does not change until a worker takes
it (WAITING -> RUNNING is a state change), and a finished one never changes. So every trial that is not running is
what a full read gives, after every poll; a running trial's attributes and intermediate values (what the progress
table shows) may be up to `RUNNING_EVERY_S` old. What must see a running trial as it is now (a dead worker's trials,
by pid) asks `read_all_next()` first. Optuna's private names used here are pinned in tests/test_port.py.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.trial import TrialState

from hpo.storage_outage import retry

RUNNING_EVERY_S = 5.0


def states(rdb: RDBStorage, study_id: int, ids: set[int], greater_than: int) -> list[tuple[int, TrialState]]:
    """(trial_id, state) of the trials `ids` and of every trial of the study with an id above `greater_than`.

    Asked as a range of the primary key from the oldest of them (`trial_id >= lo`: the unfinished trials are
    mostly the newest), plus the few much older ones (a trial running for hours) by id: PostgreSQL scans the
    whole table for an `IN` list of hundreds of ids, or for an `OR` of the two."""
    asked = sorted(i for i in ids if i <= greater_than)
    # The range from the oldest id may hold finished trials between: keep it within a few times what is asked.
    span = 4 * len(asked) + 256
    old = [i for i in asked if i < greater_than - span]
    lo = min([i for i in asked if i >= greater_than - span] + [greater_than + 1])

    def read() -> list[tuple[int, TrialState]]:
        t = models.TrialModel
        session = rdb.scoped_session()
        try:
            recent = sqlalchemy.select(t.trial_id, t.state).where(t.study_id == study_id, t.trial_id >= lo)
            rows = [(i, s) for i, s in session.execute(recent).all() if i > greater_than or i in ids]
            if old:
                rows += session.execute(sqlalchemy.select(t.trial_id, t.state).where(t.trial_id.in_(old))).all()
        finally:
            session.close()  # a read: nothing to commit; the connection goes back to the pool
        return [(int(i), s) for i, s in rows]

    return retry(read, getattr(rdb, "hpo_label", "--storage"))


class IncrementalCache(_CachedStorage):
    """Optuna's cache of an RDBStorage that reads a trial whole only when it may have changed (module doc)."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._read_at: dict[int, float] = {}  # unfinished trial_id -> when it was last read whole (monotonic)
        self._whole = True  # the next read is Optuna's own: every unfinished trial, whole
        self.reads = {"whole": 0, "states": 0, "trials": 0}  # what it asked for (tests/test_rdb_reads.py)

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
                now = time.monotonic()
                self._read_at.update(dict.fromkeys(self._studies[study_id].unfinished_trial_ids, now))
            return
        with self._lock:
            study = self._studies[study_id]
            unfinished, last = set(study.unfinished_trial_ids), study.last_finished_trial_id
        rows = states(self._backend, study_id, unfinished, last)
        now = time.monotonic()
        with self._lock:
            self.reads["states"] += 1
            need = {i for i, state in rows if self._changed(study, i, state, now)}
        if not need:
            return
        # Optuna's read takes the ids asked for and every id above the last one: the last the states query saw
        trials = self._backend._get_trials(study_id, states=None, included_trial_ids=need,  # noqa: SLF001
                                           trial_id_greater_than=max(i for i, _ in rows))
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

    def _changed(self, study: _StudyInfo, trial_id: int, state: TrialState, now: float) -> bool:
        where: Any = self._trial_id_to_study_id_and_number.get(trial_id)
        cached = study.trials.get(where[1]) if where is not None else None
        if cached is None or cached.state != state:
            return True
        return state == TrialState.RUNNING and now - self._read_at.get(trial_id, 0.0) >= RUNNING_EVERY_S

