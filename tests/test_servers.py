"""Past one machine's files: a real `mlflow server` over HTTP, PostgreSQL behind it, artifacts served by it.

The server runs in its own process with `--serve-artifacts`: every artifact (sweep.yaml, best.json,
the report, the environment snapshot, kept models) travels over HTTP into the server's own folder, as
with no shared disk. Checked with MLflow's own client, over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_hpo, write

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
TESTS = Path(__file__).resolve().parent
XS = """
name: {name}
method: grid
metric: {{name: score, goal: maximize}}
parameters:
  epochs: {{value: 2}}
  x: {{values: [0.9, 0.5, 0.7, 0.3]}}
"""


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_a_sweep_logs_and_registers_over_http_with_artifacts_on_the_server(tmp_path, mlflow_server, engine):
    """Every child and the parent on the server, nothing RUNNING; the parent's artifacts and the kept models
    live in the server's artifact folder (none under runs/NAME); the registered model loads over HTTP."""
    import mlflow
    from mlflow.tracking import MlflowClient

    url, served = mlflow_server.url, mlflow_server.artifacts
    name = f"http-{engine}"
    write(tmp_path / f"{name}.yaml", XS.format(name=name))
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS), "HPO_RAY_NUM_CPUS": "2", "RAY_ADDRESS": ""}
    run_hpo("run", f"{name}.yaml", "--backend", engine, "--workers", "2", "--tracking-uri", url, "--trainer",
            "contract_trainers:curve_model", "--register", name, "--no-progress", cwd=tmp_path, env=env,
            check=True, timeout=400)
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(name)
    assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 4
    assert all(r.info.status != "RUNNING" for r in runs), [r.info.status for r in runs]
    names = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"sweep.yaml", "best.json", "report.html", "environment"} <= names, names
    assert not (tmp_path / "runs" / name / "artifacts").exists()  # nothing written beside the sweep
    mine = served / exp.artifact_location.removeprefix("mlflow-artifacts:").strip("/")  # the server is shared
    assert mine.is_dir() and any(p.name == "sweep.yaml" for p in mine.rglob("sweep.yaml")), mine
    assert list(mine.rglob("MLmodel")), "the kept models are in the server's artifact folder"
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    assert float(np.asarray(model.predict(np.zeros((1, 1), dtype=np.float32))).ravel()[0]) == pytest.approx(0.9)
    assert client.get_model_version_by_alias(name, "best").run_id == parent[0].data.tags["hpo.best_run_id"]


RESTART = """
name: {name}
method: grid
metric: {{name: score, goal: maximize}}
parameters:
  x: {{values: [1, 2, 3, 4, 5, 6]}}
  epochs: {{value: 4}}
  sleep: {{value: 1.0}}
"""


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_the_mlflow_server_killed_and_restarted_mid_sweep_loses_nothing(tmp_path, mlflow_server, engine):
    """SIGKILL of the tracking server while trials log to it, then the same server again (its supervisor):
    MLflow's client retries while it is gone, so trials carry on; every epoch a trial logged is on the
    server, nothing stays RUNNING, the budget is met."""
    from mlflow.tracking import MlflowClient

    from hpo.storage import open_storage

    name = f"restart-{engine}"
    write(tmp_path / "sweep.yaml", RESTART.format(name=name))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS), "HPO_RAY_NUM_CPUS": "2",
           "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--backend", engine, "--workers", "2",
                             "--tracking-uri", mlflow_server.url, "--trainer", "fault_trainers:slow", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(mlflow_server.url)
    try:
        exp = _logging(client, name, proc)
        mlflow_server.restart(signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    done = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(float(c.data.params["x"]) for c in done) == [1, 2, 3, 4, 5, 6]
    for c in done:  # every epoch reached the server, across the restart
        assert sorted(m.step for m in client.get_metric_history(c.info.run_id, "score")) == [1, 2, 3, 4]
    trials = __import__("optuna").load_study(study_name=name, storage=open_storage(
        str(tmp_path / "runs" / name / "optuna.log"))).get_trials()
    assert sorted(t.value for t in trials if t.value is not None) == [4.0, 8.0, 12.0, 16.0, 20.0, 24.0]


def test_no_planted_secret_reaches_anything_hpo_writes(tmp_path, mlflow_server):
    """A tracking URL with a password, and secrets in the environment: none of them in stdout, stderr, any
    file under runs/, the server's artifacts, or any param or tag of the sweep's runs. MLflow itself prints
    `View run ... at: URL` (the URL with its password) when a run ends: hpo turns that off."""
    from mlflow.tracking import MlflowClient

    planted = {"url": "PLANTED-url-password-31", "MLFLOW_TRACKING_PASSWORD": "PLANTED-mlflow-password-32",
               "WANDB_API_KEY": "PLANTED-wandb-key-33", "AWS_SECRET_ACCESS_KEY": "PLANTED-aws-secret-34"}
    url = mlflow_server.url.replace("http://", f"http://hpo:{planted['url']}@")
    write(tmp_path / "secret.yaml", XS.format(name="secret"))
    env = {"PYTHONPATH": str(TESTS), **{k: v for k, v in planted.items() if k != "url"}}
    out = run_hpo("run", "secret.yaml", "--workers", "2", "--tracking-uri", url, "--trainer",
                  "contract_trainers:curve_model", "--no-progress", cwd=tmp_path, env=env, timeout=400)
    assert out.returncode == 0, out.stderr
    found = [f"{where}" for where, text in (("stdout", out.stdout), ("stderr", out.stderr))
             for secret in planted.values() if secret in text]
    for root in (tmp_path / "runs", mlflow_server.artifacts):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [str(path) for secret in planted.values() if secret.encode() in data]
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name("secret")
    for run in client.search_runs([exp.experiment_id], max_results=100):
        text = repr(run.data.params) + repr(run.data.tags)
        found += [f"run {run.info.run_id}" for secret in planted.values() if secret in text]
    assert not found, found
    assert "View run" not in out.stdout + (tmp_path / "runs" / "secret" / "logs" / "cpu0.log").read_text()


def _logging(client, name: str, proc: subprocess.Popen):
    """Wait until the sweep's trials are running with epochs logged; returns its experiment."""
    deadline = time.monotonic() + 240
    while True:
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'") if exp else []
        if any(r.data.metrics.get("score") for r in runs):
            return exp
        assert proc.poll() is None and time.monotonic() < deadline, "no trial logged an epoch"
        time.sleep(0.3)


def _leaks(planted: dict[str, str], texts: dict[str, str], *roots: Path) -> list[str]:
    """Where any planted secret appears: the named texts, and every file under `roots`."""
    found = [where for where, text in texts.items() for secret in planted.values() if secret in text]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found += [str(path) for secret in planted.values() if secret.encode() in data]
    return found


def test_no_planted_secret_leaks_when_the_servers_go_down_mid_sweep(tmp_path, postgres, mlflow_server):
    """The error paths: the tracking server stops answering mid-sweep (the sweep ends with one line) with a
    password in the tracking URL and another in the Optuna storage URL (a PostgreSQL role made for it);
    neither appears in stdout, stderr, the worker logs or any file under runs/."""
    import psycopg
    from mlflow.tracking import MlflowClient

    from servers import create_database

    planted = {"url": "PLANTED-down-url-41", "pg": "PLANTED-pg-password-42",
               "MLFLOW_TRACKING_PASSWORD": "PLANTED-down-mlflow-43", "WANDB_API_KEY": "PLANTED-down-wandb-44"}
    db = create_database(postgres.url, "planted")
    with psycopg.connect(postgres.url, autocommit=True) as con:
        con.execute("DROP ROLE IF EXISTS planted_role")
        con.execute(f"CREATE ROLE planted_role LOGIN PASSWORD '{planted['pg']}'")
        con.execute("ALTER DATABASE planted OWNER TO planted_role")
    with psycopg.connect(db.replace("hpo:s3cret-pw", "hpo:s3cret-pw"), autocommit=True) as con:
        con.execute("GRANT ALL ON SCHEMA public TO planted_role")
    store = db.replace("hpo:s3cret-pw", f"planted_role:{planted['pg']}")
    url = mlflow_server.url.replace("http://", f"http://hpo:{planted['url']}@")
    write(tmp_path / "sweep.yaml", RESTART.format(name="down"))
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "HPO_STORAGE_OUTAGE_S": "5",
           **{k: v for k, v in planted.items() if k.isupper()}}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--workers", "2", "--storage", store,
                             "--tracking-uri", url, "--trainer", "fault_trainers:slow", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(mlflow_server.url)
    try:
        _logging(client, "down", proc)
        mlflow_server.stop(signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        mlflow_server.start()  # the module's other tests use it
    assert proc.returncode == 1 and "--tracking-uri: the tracking server stopped answering" in err, err[-3000:]
    assert "hpo:***@" in err or "***" in err, "the URL is shown, masked"
    assert not _leaks(planted, {"stdout": out, "stderr": err}, tmp_path / "runs"), err[-3000:]
