"""What keeps hpo's own work off a trial's critical path, checked for what it must not lose.

- MLflow metrics are written by a background writer: a trial's metrics are all in the
  store when the trial ends, and a write that fails fails the trial (not swallowed).
- The journal fsyncs only records that change what a trial is; per-step values ride along.
- Progress lines without a terminal: one per finished trial, counted incrementally.
Timings are in bench/ (bench/bench_speed.py), not here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest

from hpo import api, journal, storage
from hpo.tracking import Tracker
from hpo.trial import State, TrialRun


def _trial_run(tmp_path) -> TrialRun:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = tracker.experiment("speed")
    parent = tracker.start_parent(exp, "parent", {}, {})
    return TrialRun(tracker, exp, parent, "optuna", "speed", "w0")


def test_queued_metrics_are_all_in_mlflow_when_the_trial_ends(tmp_path):
    trial_run = _trial_run(tmp_path)

    def train(config, report):
        for step in range(1, 31):
            time.sleep(0.01)
            report(step, {"val_acc": step / 100, "loss": 1 / step})

    started = time.monotonic()
    outcome, reporter = trial_run.run(0, {"x": 1}, train, "val_acc")
    wall = time.monotonic() - started
    assert outcome.state == State.COMPLETE and outcome.value == pytest.approx(0.30)
    run_id = trial_run.tracker.children(trial_run.experiment_id, trial_run.parent_id)[0].info.run_id
    history = trial_run.tracker.client.get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, 31))  # every step, none left in the queue
    assert [m.value for m in sorted(history, key=lambda m: m.step)][-1] == pytest.approx(0.30)
    run = trial_run.tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"x": "1"}
    assert run.data.tags["hpo.state"] == "complete"  # end tags too
    # The trainer's own time: at least its 30 sleeps, at most the whole trial with hpo's work around it.
    assert 0.3 <= float(run.data.tags["hpo.trainer_seconds"]) <= wall


def test_writes_are_split_within_mlflows_log_batch_limits():
    from mlflow.entities import Metric, Param, RunTag

    from hpo.tracking import chunks

    metrics = [Metric(f"m{i}", 0.0, 0, 0) for i in range(1500)]
    params = [Param(f"p{i}", "v") for i in range(250)]
    tags = [RunTag(f"t{i}", "v") for i in range(5)]
    out = chunks(metrics, params, tags)
    assert all(len(m) <= 1000 and len(p) <= 100 and len(t) <= 100 and len(m) + len(p) + len(t) <= 1000
               for m, p, t in out)
    assert [x for c in out for x in c[0]] == metrics and [x for c in out for x in c[1]] == params
    assert [x for c in out for x in c[2]] == tags and len(out) == 3


def test_a_metric_write_that_fails_fails_the_trial(tmp_path):
    """MLflow refuses a metric name with '*': the background write fails, and the trial says so."""
    trial_run = _trial_run(tmp_path)

    def train(config, report):
        for step in range(1, 4):
            report(step, {"val_acc": 0.5, "bad*name": 1.0})

    outcome, _ = trial_run.run(0, {"x": 1}, train, "val_acc")
    assert outcome.state == State.FAILED and outcome.reason == "tracking", outcome
    assert "MLflow" in outcome.error
    run = trial_run.tracker.children(trial_run.experiment_id, trial_run.parent_id)[0]
    assert run.info.status == "FAILED" and run.data.tags["hpo.reason"] == "tracking"


def test_a_refused_write_stops_the_trial_at_its_next_report(tmp_path):
    """The writer's error reaches the trainer at its next report, not hours later at the trial's end."""
    import time

    trial_run = _trial_run(tmp_path)
    steps = []

    def train(config, report):
        for step in range(1, 41):
            steps.append(step)
            report(step, {"val_acc": 0.5, **({"bad*name": 1.0} if step == 1 else {})})
            time.sleep(0.1)

    outcome, _ = trial_run.run(0, {"x": 1}, train, "val_acc")
    assert outcome.state == State.FAILED and outcome.reason == "tracking", outcome
    assert len(steps) < 40, "the trial trained on after MLflow refused its metrics"


def test_journal_fsyncs_state_changes_not_each_step(tmp_path, monkeypatch):
    from optuna.storages.journal._storage import JournalOperation as Op

    # The op codes hpo leaves unsynced, by name: an Optuna that renumbers them fails here.
    assert journal.UNSYNCED_OPS == {Op.SET_TRIAL_PARAM, Op.SET_TRIAL_INTERMEDIATE_VALUE,
                                    Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_SYSTEM_ATTR}
    path = tmp_path / "optuna.log"
    study = optuna.create_study(study_name="s", storage=storage.open_storage(str(path)))
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(journal.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    for _ in range(5):
        study.enqueue_trial({}, user_attrs={"hpo.queued": True})
    assert synced == []  # the queue: a lost WAITING trial is enqueued again by the next run
    trial = storage.claim(study)
    assert len(synced) == 1  # taken: RUNNING is on disk before the trial runs
    synced.clear()
    for step in range(1, 28):
        trial.report(0.1 * step, step)
    trial.set_user_attr("hpo.worker", "w0")
    assert synced == []  # 27 intermediate values and an attribute: no fsync of their own
    study.tell(trial, 1.0)
    assert len(synced) == 1  # the state change is synced, and carries the records before it
    reread = optuna.load_study(study_name="s", storage=storage.open_storage(str(path))).trials[0]
    assert reread.state.is_finished() and len(reread.intermediate_values) == 27
    assert sum(t.state.name == "WAITING" for t in optuna.load_study(study_name="s", storage=storage.open_storage(
        str(path))).trials) == 4


def test_mlflow_db_alone_holds_the_sweep_after_exit(tmp_path, tiny_sweep):
    """hpo exits without closing its connections (no interpreter teardown), so it folds SQLite's
    write-ahead log into mlflow.db first: a copy of that one file has every run."""
    import shutil
    import sqlite3

    from conftest import run_hpo

    run_hpo("run", str(tiny_sweep), "--workers", "1", "--trials", "2", "--no-progress", cwd=tmp_path, check=True)
    copy = tmp_path / "copy.db"
    shutil.copy(tmp_path / "runs" / "tiny" / "mlflow.db", copy)  # without mlflow.db-wal
    with sqlite3.connect(copy) as con:
        statuses = sorted(r[0] for r in con.execute("select status from runs"))
    assert len(statuses) == 3 and set(statuses) <= {"FINISHED", "KILLED"}, statuses  # parent + 2 trials, ended


def test_a_controllers_early_workers_wait_for_its_own_parent_run(tmp_path, monkeypatch):
    """Workers start while the controller opens the parent run; on a resumed study the earlier run's
    `hpo.parent_run_id` is already there, so they wait for this controller's own mark."""
    import json

    from hpo.backends.optuna.worker import WorkerConfig, load_study
    from hpo.errors import UsageError
    from hpo.spec import from_dict

    s = from_dict({"method": "random", "metric": {"name": "v", "goal": "maximize"},
                   "parameters": {"x": {"values": [1, 2]}}})
    path = str(tmp_path / "optuna.log")
    study = optuna.create_study(study_name="w", storage=storage.open_storage(path), direction="maximize")
    study.set_user_attr("hpo.spec", json.dumps(s.raw))
    study.set_user_attr("hpo.parent_run_id", "from-an-earlier-run")
    study.set_user_attr("hpo.controller", "an-earlier-launch")
    monkeypatch.setenv("HPO_LAUNCH", "this-launch")  # what a controller gives the workers it starts
    mine = WorkerConfig("w", path, parent_pid=4242)
    with pytest.raises(UsageError):
        load_study(mine, wait=0.3)  # the earlier run's mark is not this one's
    assert load_study(WorkerConfig("w", path), wait=0)[0].study_name == "w"  # a worker joined by hand does not wait
    study.set_user_attr("hpo.controller", "this-launch")
    assert load_study(mine, wait=0.3)[0].study_name == "w"


def test_the_tally_counts_as_a_full_recount_does(tmp_path):
    """Incremental counts (each COMPLETE/PRUNED trial read once) against storage.count at every step of a
    study whose trials finish out of order, fail, are failed by the machine and are re-run."""
    study = optuna.create_study(study_name="t", storage=storage.open_storage(str(tmp_path / "optuna.log")))
    tally = storage.Tally()
    running = []
    for i in range(12):
        study.enqueue_trial({}, user_attrs={"hpo.queued": True})
        assert tally.count(study.get_trials(deepcopy=False)) == storage.count(study.get_trials(deepcopy=False))
        running.append(study.ask())
        running[-1].suggest_float("x", 0.0, 1.0)  # a failed trial with params can be re-run
        assert tally.count(study.get_trials(deepcopy=False)) == storage.count(study.get_trials(deepcopy=False))
    for k, t in enumerate(reversed(running)):  # finish in reverse order, every kind of ending
        if k % 4 == 0:
            study.tell(t, float(k))
        elif k % 4 == 1:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        elif k % 4 == 2:
            storage.fail_trial(study, t._trial_id, "worker died")  # the machine's fault: not counted
        else:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        assert tally.count(study.get_trials(deepcopy=False)) == storage.count(study.get_trials(deepcopy=False))
    assert storage.queue_retries(study, 1) > 0  # re-runs link back to failed trials: those become "retried"
    final = tally.count(study.get_trials(deepcopy=False))
    assert final == storage.count(study.get_trials(deepcopy=False))
    assert final.retried > 0 and final.complete == 3 and final.pruned == 3 and final.waiting > 0


def test_a_study_from_before_the_pruner_choice_keeps_optunas_hyperband(tmp_path):
    """Resuming a study whose workers ran HyperbandPruner must not switch it to SuccessiveHalving mid-study;
    a new study gets the default (or the flag)."""
    import json
    from types import SimpleNamespace

    from hpo.backends.optuna.controller import _record_pruner
    from hpo.spec import from_dict

    spec = from_dict({"method": "random", "metric": {"name": "v", "goal": "maximize"},
                      "early_terminate": {"type": "hyperband", "min_iter": 1},
                      "parameters": {"epochs": {"value": 9}}})
    store = storage.open_storage(str(tmp_path / "optuna.log"))
    old = optuna.create_study(study_name="old", storage=store, direction="maximize")
    old.set_user_attr("hpo.spec", json.dumps(spec.raw))  # made by an earlier hpo run
    new = optuna.create_study(study_name="new", storage=store, direction="maximize")
    plan = SimpleNamespace(options=api.Options(), spec=spec, name="x")
    _record_pruner(plan, old)
    _record_pruner(plan, new)
    assert old.user_attrs["hpo.optuna_pruner"] == "hyperband"
    assert new.user_attrs["hpo.optuna_pruner"] == "sha"


def test_the_parent_run_keeps_the_sweeps_environment(tmp_path, tiny_sweep):
    """requirements.txt, environment.json (versions, git state, the command with passwords masked) on the
    parent, written while the trials ran."""
    import json as jsonlib

    from mlflow.tracking import MlflowClient

    from conftest import run_hpo
    from hpo.provenance import snapshot

    files = snapshot(["hpo", "run", "--storage", "postgresql://me:hunter2@db/x"])
    assert "hunter2" not in files["environment.json"] and "me:***@db" in files["environment.json"]

    import subprocess

    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "sweep.yaml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "sweep"], cwd=tmp_path, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    tiny_sweep.write_text(tiny_sweep.read_text() + "# an edit not committed\n")
    out = run_hpo("run", str(tiny_sweep), "--workers", "1", "--trials", "1", "--no-progress", "--json",
                  cwd=tmp_path, check=True)
    parent = jsonlib.loads(out.stdout.strip().splitlines()[-1])["parent_run_id"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'tiny' / 'mlflow.db'}")
    where = client.download_artifacts(parent, "environment", str(tmp_path / "env"))
    pins = (Path(where) / "requirements.txt").read_text().splitlines()
    assert any(p.startswith("optuna==") for p in pins) and any(p.startswith("mlflow==") for p in pins)
    env = jsonlib.loads((Path(where) / "environment.json").read_text())
    assert env["command"].split()[-6:] == ["--workers", "1", "--trials", "1", "--no-progress", "--json"]
    assert env["python"] and env["torch"] and env["hpo"]
    assert env["git_sha"] == sha and env["git_dirty"] is True
    assert "an edit not committed" in (Path(where) / "git.diff").read_text()
    assert client.get_run(parent).data.tags["hpo.git_dirty"] == "true"
