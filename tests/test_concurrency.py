"""Many writers on one study: the journal file locally, a real PostgreSQL across 'machines'."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import load_study, run_hpo, runs_of, write

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS)}
TRIVIAL = """
    name: {name}
    method: random
    metric: {{name: score, goal: maximize}}
    parameters:
      x: {{distribution: uniform, min: 0.0, max: 1.0}}
"""


def test_eight_workers_two_hundred_trials_on_the_journal(tmp_path):
    sweep = write(tmp_path / "s.yaml", TRIVIAL.format(name="many"))
    run_hpo("run", str(sweep), "--workers", "8", "--trials", "200", "--trainer", "fault_trainers:trivial",
            "--no-progress", cwd=tmp_path, env=ENV, check=True, timeout=600)
    sweep_dir = tmp_path / "runs" / "many"
    trials = load_study(sweep_dir, "many").get_trials()
    assert sorted(t.number for t in trials) == list(range(200)), "200 distinct numbers, none lost or duplicated"
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["hpo.worker"] for t in trials}) >= 2
    _, _, _, children = runs_of(sweep_dir, "many")
    assert sorted(int(c.data.tags["hpo.trial"]) for c in children) == list(range(200))


@pytest.fixture
def postgres_url(postgres):
    return postgres.url


@pytest.mark.postgres
def test_two_workers_join_a_study_on_postgres(tmp_path, postgres_url):
    """The controller and two extra `hpo worker` processes (as on other machines) share one study. (Its trials take
    ~1.2 s each: the joiners start a few seconds after the controller's worker, later on a loaded machine.)"""
    sweep = write(tmp_path / "s.yaml", TRIVIAL.format(name="pg") + "      epochs: {value: 2}\n      sleep: {value: 0.6}\n")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ctl = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(sweep), "--storage", postgres_url, "--workers",
                            "1", "--trials", "16", "--trainer", "fault_trainers:slow", "--no-progress"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "runs" / "pg" / "mlflow.db").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    uri = f"sqlite:///{tmp_path / 'runs' / 'pg' / 'mlflow.db'}"
    joiners = [subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--study", "pg", "--storage", postgres_url,
                                 "--tracking-uri", uri, "--name", f"remote{i}"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    out, err = ctl.communicate(timeout=300)
    assert ctl.returncode == 0, err
    for j in joiners:
        _, jerr = j.communicate(timeout=60)
        assert j.returncode == 0, jerr
        assert "s3cret-pw" not in jerr
    assert "s3cret-pw" not in out + err
    import optuna

    from hpo.storage import open_storage

    trials = optuna.load_study(study_name="pg", storage=open_storage(postgres_url)).get_trials()
    assert sorted(t.number for t in trials) == list(range(16))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["hpo.worker"] for t in trials}
    assert {"remote0", "remote1"} & workers, "the joining workers took trials"
    _, _, parents, children = runs_of(tmp_path / "runs" / "pg", "pg")
    assert len(children) == 16
    assert parents[0].data.tags["hpo.storage"].count("***") == 1
    assert all("s3cret-pw" not in json.dumps(c.data.params) + json.dumps(c.data.tags) for c in children)
    assert all("s3cret-pw" not in json.dumps(t.user_attrs) for t in trials)
    for log in (tmp_path / "runs" / "pg" / "logs").iterdir():
        assert "s3cret-pw" not in log.read_text()


@pytest.mark.postgres
def test_a_remote_worker_killed_mid_trial_is_found_by_its_missing_heartbeat(tmp_path, postgres_url, mlflow_server):
    """A worker on 'another machine' (its own hostname in a UTS namespace, its own folder without the sweep
    file, only the study's name and the database in its environment) joins a sweep that logs to an MLflow
    server, and is SIGKILLed mid-trial: the controller cannot see its process, so the trial's missing
    heartbeat is what fails it; a replacement is queued and the budget met."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to give the worker another hostname")
    sweep = write(tmp_path / "s.yaml", TRIVIAL.format(name="hb") + "      epochs: {value: 6}\n      sleep: {value: 1.0}\n")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1", "HPO_HEARTBEAT_GRACE_S": "6"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ctl = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(sweep), "--storage", postgres_url, "--study",
                            "hb", "--workers", "1", "--trials", "6", "--trainer", "fault_trainers:slow",
                            "--tracking-uri", mlflow_server.url, "--no-progress"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import optuna
    from mlflow.tracking import MlflowClient

    from hpo.storage import open_storage

    client = MlflowClient(mlflow_server.url)
    deadline = time.monotonic() + 90
    while not (client.get_experiment_by_name("hb") and client.search_runs(  # made after the study's tables:
            [client.get_experiment_by_name("hb").experiment_id])):         # no race to create them
        assert time.monotonic() < deadline and ctl.poll() is None, "the sweep started"
        time.sleep(0.5)
    study = optuna.load_study(study_name="hb", storage=open_storage(postgres_url))
    while "hpo.parent_run_id" not in study.user_attrs:
        assert time.monotonic() < deadline and ctl.poll() is None, "the sweep started"
        time.sleep(0.5)
    elsewhere = tmp_path / "other-machine"
    elsewhere.mkdir()
    remote = [subprocess.Popen(["unshare", "--uts", "sh", "-c", f"hostname remote-{i} && exec {sys.executable} -m hpo "
                                f"worker --study hb --name remote{i}"],
                               cwd=elsewhere, env={**env, "HPO_STORAGE": postgres_url}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
    victim = None
    while victim is None and time.monotonic() < deadline + 60:
        time.sleep(0.5)
        victim = next((t for t in study.get_trials() if t.state == TrialState.RUNNING  # mid-trial: its run made
                       and t.user_attrs.get("hpo.host") == "remote-0" and "hpo.mlflow_run_id" in t.user_attrs), None)
    assert victim is not None, "the remote worker took a trial and opened its run"
    remote[0].kill()
    remote[0].wait()
    out, err = ctl.communicate(timeout=240)
    assert ctl.returncode == 0, err
    _, survivor_err = remote[1].communicate(timeout=120)
    assert remote[1].returncode == 0, survivor_err
    trials = {t.number: t for t in study.get_trials()}
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["hpo.reason"] == "worker died"
    assert "no heartbeat" in dead.user_attrs["hpo.error"] and "remote-0" in dead.user_attrs["hpo.error"]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 6, "the killed trial was replaced"
    assert "remote1" in {t.user_attrs.get("hpo.worker") for t in trials.values()}, "the other remote worker took trials"
    assert not list(elsewhere.iterdir()), "a joining worker writes nothing in its folder: all goes to the servers"
    runs = client.search_runs([client.get_experiment_by_name("hb").experiment_id], max_results=100)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in runs}
    assert by_id[dead.user_attrs["hpo.mlflow_run_id"]].info.status == "FAILED"
    for t in trials.values():  # every finished trial's curve reached the server, from wherever it ran
        if t.state == TrialState.COMPLETE:
            history = client.get_metric_history(t.user_attrs["hpo.mlflow_run_id"], "score")
            assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


@pytest.mark.postgres
def test_the_database_down_for_ten_seconds_mid_sweep_loses_nothing(tmp_path, postgres):
    """Workers and controller wait for the database (bounded by HPO_STORAGE_OUTAGE_S) and carry on: the outage
    spans several of each worker's reports (0.5 s apart) and the controller's polls."""
    sweep = write(tmp_path / "s.yaml", TRIVIAL.format(name="outage").replace(
        "x: {{distribution: uniform, min: 0.0, max: 1.0}}", "x: {distribution: uniform, min: 0.0, max: 1.0}\n"
        "      epochs: {value: 6}\n      sleep: {value: 0.5}"))
    args = ["run", str(sweep), "--workers", "2", "--trials", "4", "--trainer", "fault_trainers:slow", "--no-progress",
            "--storage", postgres.url]
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=tmp_path, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import optuna

    from hpo.storage import open_storage

    store = open_storage(postgres.url)

    def reporting() -> int:  # trials a worker has begun and reported from: both workers are up and writing
        try:
            study = optuna.load_study(study_name="outage", storage=store)
        except KeyError:  # not made yet
            return 0
        return sum(1 for t in study.get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and reporting() < 2:
        time.sleep(0.3)
    assert proc.poll() is None and reporting() == 2, "two workers inside their first trials"
    postgres.stop()
    time.sleep(10)
    postgres.start()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["complete"] == 4, summary
    trials = optuna.load_study(study_name="outage", storage=open_storage(postgres.url)).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    _, _, parents, children = runs_of(tmp_path / "runs" / "outage", "outage")
    assert parents[0].info.status == "FINISHED" and not [c for c in children if c.info.status == "RUNNING"]
