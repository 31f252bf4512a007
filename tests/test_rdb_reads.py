"""The controller's incremental reads of an RDB study (hpo.rdb_reads) against a full read, after every step.

A real RDB (SQLite file through Optuna's RDBStorage): the "controller" reads through `IncrementalCache`, the
"workers" and a second controller write through storages of their own, as separate processes would, and each
step is checked against a fresh `RDBStorage` reading the whole study: trials taken out of order, values and
attributes set while running, ends out of order, failures, retries (enqueued with params), a second controller's
trials, and a resume (a new cache over the same study).
"""

from __future__ import annotations

import random
import time

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from hpo import keys, storage
from hpo.rdb_reads import IncrementalCache
import hpo.rdb_reads as rdb_reads


@pytest.fixture
def url(rdb_url):
    """The study on SQLite (states asked as ranges of ids) and on PostgreSQL (asked id by id: `unnest`)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=rdb_url, direction="maximize")
    yield rdb_url
    for store in _PLAIN.pop(rdb_url, []):
        store.engine.dispose()


_PLAIN: dict[str, list[RDBStorage]] = {}


def full(url: str) -> list:
    """A full read, through a new cache each time (one storage per URL: one connection pool)."""
    store = _PLAIN.setdefault(url, [RDBStorage(url)])[0]
    return optuna.load_study(study_name="s", storage=store).get_trials(deepcopy=False)


def same(got: list, want: list, running_too: bool) -> None:
    assert [(t.number, t.state) for t in got] == [(t.number, t.state) for t in want]
    for g, w in zip(got, want):
        if running_too or w.state != TrialState.RUNNING:
            assert g == w, (g.number, g.state, g, w)


def test_every_poll_equals_a_full_read_through_claims_ends_failures_retries_and_a_second_controller(url):
    rng = random.Random(7)
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    other = optuna.load_study(study_name="s", storage=RDBStorage(url))  # a second controller, its own queue
    workers = [optuna.load_study(study_name="s", storage=RDBStorage(url)) for _ in range(3)]
    for _ in range(12):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    running: list[optuna.Trial] = []
    for step in range(120):
        act = rng.random()
        if act < 0.3:  # a worker takes a trial (any of the waiting ones) and starts it
            w = rng.choice(workers)
            trial = storage.claim(w)
            if trial is not None:
                trial.suggest_float("x", 0, 1)
                trial.set_user_attr(keys.WORKER, f"w{step}")
                running.append(trial)
        elif act < 0.5 and running:  # a report, as a pruner's rung attribute and an intermediate value
            t = rng.choice(running)
            t.report(rng.random(), step)
            t.storage.set_trial_system_attr(t._trial_id, f"completed_rung_{step}", 0.5)
        elif act < 0.75 and running:  # an end, in any order: complete, pruned or failed
            t = running.pop(rng.randrange(len(running)))
            how = rng.choice([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
            if how == TrialState.FAIL:
                t.storage.set_trial_user_attr(t._trial_id, keys.REASON, "worker died")
            t.storage.set_trial_state_values(t._trial_id, how, [rng.random()] if how == TrialState.COMPLETE else None)
        elif act < 0.85:  # the second controller queues a retry with params, or more budget
            other.enqueue_trial({"x": rng.random()}, user_attrs={keys.QUEUED: True, keys.RETRY_OF: 0})
        else:
            ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
        same(ctl.get_trials(deepcopy=False), full(url), running_too=False)
    ctl._storage.read_all_next()
    same(ctl.get_trials(deepcopy=False), full(url), running_too=True)
    assert ctl._storage.reads["states"] > 100 and ctl._storage.reads["whole"] == 2
    resumed = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))  # a resume
    same(resumed.get_trials(deepcopy=False), full(url), running_too=True)


def test_a_poll_reads_whole_only_the_trials_that_changed_and_running_ones_every_few_seconds(url, monkeypatch):
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    worker = optuna.load_study(study_name="s", storage=RDBStorage(url))
    for _ in range(20):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    ctl.get_trials()  # the first read: whole
    reads = ctl._storage.reads
    before = reads["trials"]
    ctl.get_trials()
    assert reads["trials"] == before, "nothing changed: no trial read again (Optuna's cache reads all 20)"
    a, b = storage.claim(worker), storage.claim(worker)
    ctl.get_trials()
    assert reads["trials"] == before + 2, "the two trials taken, not the 18 still waiting"
    a.report(0.5, 1)
    worker._storage.set_trial_state_values(b._trial_id, TrialState.COMPLETE, [1.0])
    monkeypatch.setattr(rdb_reads, "RUNNING_EVERY_S", 3600.0)
    ctl.get_trials()
    assert reads["trials"] == before + 3, "the finished one only; the running one waits for its turn"
    assert ctl.get_trials()[a.number].intermediate_values == {}  # a few seconds old, by design
    monkeypatch.setattr(rdb_reads, "RUNNING_EVERY_S", 0.0)
    assert ctl.get_trials()[a.number].intermediate_values == {1: 0.5}  # its turn came
    assert reads["trials"] == before + 4


def test_a_trial_running_far_behind_the_newest_is_still_followed(url):
    """The states query takes a range of ids from the oldest unfinished trial, and trials much older than the rest
    by id: one trial left running while 400 newer ones end is still seen to finish."""
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    worker = optuna.load_study(study_name="s", storage=RDBStorage(url))
    ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    first = storage.claim(worker)
    worker.add_trials([optuna.trial.create_trial(value=1.0) for _ in range(400)])
    assert [t.state for t in ctl.get_trials(deepcopy=False)][:2] == [TrialState.RUNNING, TrialState.COMPLETE]
    ctl.get_trials(deepcopy=False)  # the stuck trial is now far behind the last finished one
    worker._storage.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [2.0])
    same(ctl.get_trials(deepcopy=False), full(url), running_too=True)
    assert ctl.get_trials(deepcopy=False)[0].value == 2.0


def test_a_poll_asks_the_running_trials_and_the_head_of_the_queue_not_the_whole_queue(url, monkeypatch):
    """hpo queues a sweep's whole budget. Workers take trials in id order, so a poll asks the states of the running
    trials, the lowest waiting ones and any new trial, not of the 300 queued: and still equals a full read."""
    rng = random.Random(3)
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    workers = [optuna.load_study(study_name="s", storage=RDBStorage(url)) for _ in range(3)]
    ctl.add_trials([optuna.trial.create_trial(value=1.0) for _ in range(50)])  # a study with history
    for _ in range(300):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    monkeypatch.setattr(rdb_reads, "ALL_STATES_EVERY_S", 3600.0)
    ctl.get_trials(deepcopy=False)  # the first read: whole
    cache, running, most = ctl._storage, [], 0
    for step in range(60):
        for _ in range(rng.randint(0, 2)):
            trial = storage.claim(rng.choice(workers))
            trial.set_user_attr(keys.WORKER, f"w{step}")
            running.append(trial)
        for _ in range(rng.randint(0, 2)):
            if running:
                t = running.pop(rng.randrange(len(running)))
                t.storage.set_trial_state_values(t._trial_id, TrialState.COMPLETE, [rng.random()])
        if step % 7 == 0:
            ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})  # more budget: a new trial
        before = cache.reads["state_rows"]
        same(ctl.get_trials(deepcopy=False), full(url), running_too=False)
        most = max(most, cache.reads["state_rows"] - before)
    waiting = sum(t.state == TrialState.WAITING for t in full(url))
    assert waiting > 200 and most <= len(running) + 2 * 32 + 60, (most, len(running), waiting)  # window: 32 and up


def test_a_waiting_trial_taken_out_of_order_is_seen_by_the_next_poll_that_asks_every_state(url, monkeypatch):
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    worker = optuna.load_study(study_name="s", storage=RDBStorage(url))
    for _ in range(100):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    monkeypatch.setattr(rdb_reads, "ALL_STATES_EVERY_S", 3600.0)
    ctl.get_trials(deepcopy=False)
    deep = worker.get_trials(deepcopy=False)[90]  # far past the lowest waiting ones
    assert worker._storage.set_trial_state_values(deep._trial_id, TrialState.RUNNING)
    assert ctl.get_trials(deepcopy=False)[90].state == TrialState.WAITING  # not asked: up to ALL_STATES_EVERY_S old
    monkeypatch.setattr(rdb_reads, "ALL_STATES_EVERY_S", 0.0)
    same(ctl.get_trials(deepcopy=False), full(url), running_too=True)
    assert ctl.get_trials(deepcopy=False)[90].state == TrialState.RUNNING


def test_a_poll_reads_few_running_trials_again_and_the_oldest_read_first(url, monkeypatch):
    """At 120 running, a poll reads 2 of them again (max(2, running // RUNNING_MANY)), those read longest ago."""
    ctl = optuna.load_study(study_name="s", storage=IncrementalCache(RDBStorage(url)))
    worker = optuna.load_study(study_name="s", storage=RDBStorage(url))
    for _ in range(120):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    ctl.get_trials(deepcopy=False)
    taken = [storage.claim(worker) for _ in range(120)]
    monkeypatch.setattr(rdb_reads, "ALL_STATES_EVERY_S", 0.0)
    assert all(t.state == TrialState.RUNNING for t in ctl.get_trials(deepcopy=False))
    for t in taken:
        t.report(1.0, 1)
    monkeypatch.setattr(rdb_reads, "RUNNING_EVERY_S", 0.0)
    reads, fresh = ctl._storage.reads, []
    for _ in range(3):
        before = reads["trials"]
        fresh.append({t.number for t in ctl.get_trials(deepcopy=False) if t.intermediate_values})
        assert reads["trials"] == before + 2
    assert len(fresh[0]) == 2 and fresh[0] < fresh[1] < fresh[2] and len(fresh[2]) == 6, fresh


def test_a_claim_asks_the_head_of_the_queue_and_reads_no_trial_whole(url, monkeypatch):
    """A worker's claim asks the lowest queued ids a few at a time (Optuna's pop reads every unfinished trial whole
    first), and asks again past them when other workers took them all meanwhile."""
    ctl = optuna.load_study(study_name="s", storage=RDBStorage(url))
    for _ in range(40):
        ctl.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    worker = optuna.load_study(study_name="s", storage=RDBStorage(url))
    other = RDBStorage(url)
    _PLAIN.setdefault(url, []).extend([ctl._storage._backend, worker._storage._backend, other])
    monkeypatch.setattr(storage, "CLAIM_ASKS", 2)
    read, asked, whole = rdb_reads.waiting, [], []

    def others_take_what_it_asked_twice(rdb, study_id, above, limit):
        ids = read(rdb, study_id, above, limit)
        asked.append(ids)
        for i in ids if len(asked) <= 2 else []:
            assert other.set_trial_state_values(i, TrialState.RUNNING)
        return ids

    monkeypatch.setattr(rdb_reads, "waiting", others_take_what_it_asked_twice)
    real = RDBStorage._get_trials
    monkeypatch.setattr(RDBStorage, "_get_trials", lambda *a, **k: whole.append(a) or real(*a, **k))
    trial = storage.claim(worker)
    monkeypatch.setattr(RDBStorage, "_get_trials", real)
    assert trial is not None and trial.number == 4, "past the two asks the others took"
    assert [len(ids) for ids in asked] == [2, 2, 2] and not whole, "three asks of two ids; no trial read whole"
    assert [t.state for t in full(url)][:6] == [TrialState.RUNNING] * 5 + [TrialState.WAITING]


@pytest.mark.postgres
def test_on_postgresql_states_are_asked_by_primary_key_however_many(postgres):
    """Past a few hundred ids (fewer on a small study) PostgreSQL's planner reads the states by scanning the study
    (a hash join over a scan of `trials`: every trial, at every poll that asks every unfinished state). The server's
    own counters: the states read fetches the trials asked for through the primary key, and scans nothing."""
    import uuid

    import psycopg
    import servers

    url = servers.create_database(postgres.url, f"rdb_{uuid.uuid4().hex[:12]}")
    study = optuna.create_study(study_name="s", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    study.add_trials([optuna.trial.create_trial(value=float(i)) for i in range(120)])
    study._storage._backend.engine.dispose()
    asked = sorted(t._trial_id for t in study.get_trials(deepcopy=False))[::3]
    rdb = RDBStorage(url.replace("postgresql://", "postgresql+psycopg://"))
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("ANALYZE")  # as autovacuum keeps a live study's statistics

        def counts() -> tuple[int, int, int]:
            con.execute("SELECT pg_stat_clear_snapshot()")
            return con.execute("SELECT seq_scan, seq_tup_read, idx_tup_fetch FROM pg_stat_user_tables "
                               "WHERE relname = 'trials'").fetchone()

        before = counts()
        got, _ = rdb_reads.states(rdb, study._study_id, set(asked), asked[-1] + 100)
        rdb.engine.dispose()  # its server process ends and reports its counters
        for _ in range(100):
            if counts() != before:
                break
            time.sleep(0.1)
        scans, scanned, fetched = (a - b for a, b in zip(counts(), before))
    assert len(got) == len(asked) == 40
    assert (scans, scanned) == (0, 0), f"{scans} sequential scan(s) of trials, {scanned} rows"
    assert fetched <= len(asked) + 2, f"{fetched} rows fetched through indexes for {len(asked)} asked"
