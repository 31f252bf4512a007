"""Heartbeats on an RDB storage (issue 27): one beat per running trial per interval, none per trial start, and a
trial whose worker stopped beating (or never began) is found stale; a trial no worker took is never.

Real SQLite RDB storage through hpo's own `open_storage`, a grace of 2 s (interval 1 s)."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo import keys, storage

GRACE = 2


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setenv("HPO_HEARTBEAT_GRACE_S", str(GRACE))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name="hb", storage=storage.open_storage(f"sqlite:///{tmp_path / 'o.db'}"))


class Counting:
    """Counts the heartbeats written, by wrapping the storage's `record_heartbeat`."""

    def __init__(self, study, monkeypatch):
        self.beats: list[int] = []
        store = study._storage  # noqa: SLF001
        real = store.record_heartbeat
        monkeypatch.setattr(store, "record_heartbeat", lambda tid: (self.beats.append(tid), real(tid))[1])


def _take(study) -> optuna.Trial:
    study.enqueue_trial({}, user_attrs={keys.QUEUED: True})
    return storage.claim(study)


def test_short_trials_write_no_heartbeat_and_a_long_one_one_per_interval(study, monkeypatch):
    assert storage.heartbeat_interval_s() == GRACE // 2
    count = Counting(study, monkeypatch)
    started = time.monotonic()
    for _ in range(20):  # 20 trials of ~0.05 s: one per trial start was 20 beats
        trial = _take(study)
        with storage.Heartbeat(study, trial._trial_id):  # noqa: SLF001
            time.sleep(0.05)
        study.tell(trial, 1.0)
    short = time.monotonic() - started
    assert len(count.beats) <= short / storage.heartbeat_interval_s() + 1, count.beats
    count.beats.clear()
    trial = _take(study)
    with storage.Heartbeat(study, trial._trial_id):  # noqa: SLF001
        deadline = time.monotonic() + 30
        while len(count.beats) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    study.tell(trial, 1.0)
    assert count.beats[:3] == [trial._trial_id] * 3, "a running trial is beaten every interval"  # noqa: SLF001
    time.sleep(1.5 * storage.heartbeat_interval_s())
    assert len(count.beats) == 3, "a finished trial is beaten no more"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")
def test_a_trial_whose_worker_stopped_beating_or_never_began_is_stale_and_one_no_worker_took_is_not(study):
    stale = storage.StaleTrials()
    beaten, never = _take(study), _take(study)
    mirrored = study.ask()  # as the Ray and W&B engines' trials: in the study, RUNNING, never in hpo's queue
    study._storage.record_heartbeat(beaten._trial_id)  # noqa: SLF001
    running = lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # noqa: E731
    assert stale.find(study, running()) == [], "a fresh beat, and a trial seen unbeaten only now"
    deadline = time.monotonic() + 60
    found: list[int] = []
    while time.monotonic() < deadline and len(found) < 2:
        time.sleep(0.25)
        found = stale.find(study, running())
    assert sorted(found) == sorted([beaten._trial_id, never._trial_id]), found  # noqa: SLF001
    assert mirrored._trial_id not in found  # noqa: SLF001
    study._storage.record_heartbeat(beaten._trial_id)  # noqa: SLF001 - it beats again: not stale any more
    assert beaten._trial_id not in stale.find(study, running())  # noqa: SLF001


def test_the_journal_has_no_heartbeat(tmp_path):
    study = optuna.create_study(storage=storage.open_storage(str(tmp_path / "j.log")))
    trial = _take(study)
    assert storage.StaleTrials().find(study, [study.trials[0]]) == []
    with storage.Heartbeat(study, trial._trial_id):  # noqa: SLF001
        pass
