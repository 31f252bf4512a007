"""The controller's incremental view of a study (storage.Tally: counts, and the trials a live view and
status.json need, in time that grows with the running trials) equals a full read of the study after every
step: trials queued, claimed and ended out of order, pruned, failed by the trainer or by a dead worker,
re-run by --retries, interrupted; a second controller's handle writing to the same study; a resume (a
new Tally on a study with history). Real Optuna storages: the journal file and SQLite."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

from hpo import keys, storage


def _full(trials, direction):
    return (storage.count(trials), storage.best_trial(trials, direction),
            sorted(t.number for t in trials if t.state == TrialState.RUNNING))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_incremental_view_equals_a_full_read_after_every_step(tmp_path, kind):
    url = str(tmp_path / "optuna.log") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mine = optuna.create_study(study_name="inc", storage=storage.open_storage(url), direction="maximize")
    other = optuna.load_study(study_name="inc", storage=storage.open_storage(url))  # a second controller
    rng, tally, printed = random.Random(7), storage.Tally(), set()
    checks = 0
    for step in range(260):
        study = rng.choice([mine, other])
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        op = rng.random()
        if op < 0.3 or not (waiting or running):
            study.enqueue_trial({"x": rng.random()}, user_attrs={keys.QUEUED: True})
        elif op < 0.5 and waiting:
            storage.claim(study)
        elif running:
            t = rng.choice(running)  # out of order
            end = rng.random()
            if end < 0.55:
                study.tell(t.number, rng.random())
            elif end < 0.7:
                study.tell(t.number, state=TrialState.PRUNED)
            elif end < 0.8:
                storage.fail_trial(study, t._trial_id, "worker died")  # infrastructure: retried
            elif end < 0.9:
                storage.fail_trial(study, t._trial_id, "interrupted")
            else:
                storage.fail_trial(study, t._trial_id, "error")  # the trainer's: counted
            if end >= 0.7 and rng.random() < 0.5:
                storage.queue_retries(study, retries=2)
        if step == 150:
            tally, printed = storage.Tally(), set()  # a resume: a new controller on a study with history
        # The controller's poll: its own handle's read, then the incremental count and view.
        trials = mine.get_trials(deepcopy=False)
        counts, best, running_now = _full(trials, "maximize")
        assert tally.count(trials) == counts, f"step {step}"
        view = tally.view(trials, "maximize")
        got = storage.best_trial(view, "maximize")
        assert (got and got.number) == (best and best.number), f"step {step}: best"
        assert sorted(t.number for t in view if t.state == TrialState.RUNNING) == running_now, f"step {step}"
        printed |= {t.number for t in view if t.state.is_finished()}
        checks += 1
    finished = {t.number for t in mine.get_trials() if t.state.is_finished()}
    assert finished and printed == {n for n in finished if n >= 0}, "every finished trial reached the view once"
    assert checks == 260
    assert len(view) < len(trials), "the view is not the whole study"


def test_a_claim_skips_a_queued_trial_another_worker_took_and_finished_meanwhile(tmp_path, monkeypatch):
    """A worker reads the queue, another worker claims and ends its first trial, then the first worker tries
    to take it: Optuna refuses to update a finished trial; the worker takes the next one instead of dying
    (found by bench/bench_scale.py with 280 workers on PostgreSQL)."""
    from hpo import rdb_reads

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="q", storage=storage.open_storage(url))
    for x in (1.0, 2.0):
        study.enqueue_trial({"x": x})
    other = optuna.load_study(study_name="q", storage=storage.open_storage(url))
    read, raced = rdb_reads.waiting, []

    def then_the_other_worker_wins(*args):
        ids = read(*args)
        if not raced:  # once: right after the first worker read the queue
            raced.append(None)
            raced[0] = storage.claim(other)
            other.tell(raced[0].number, 1.0)
        return ids

    monkeypatch.setattr(rdb_reads, "waiting", then_the_other_worker_wins)
    mine = storage.claim(study)
    assert raced[0].number == 0
    assert mine is not None and mine.number == 1, "the next queued trial, not a crash"
