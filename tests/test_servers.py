"""Past one machine's files: a real `mlflow server` over HTTP, PostgreSQL behind it, artifacts served by it.

The server runs in its own process with `--serve-artifacts`: every artifact (sweep.yaml, best.json,
the report, the environment snapshot, kept models) travels over HTTP into the server's own folder, as
with no shared disk. Checked with MLflow's own client, over HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, run_hpo, write

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


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and served artifacts."""
    root = Path(tempfile.mkdtemp(prefix="hpo-mlflow-server-"))
    port = free_port()
    store = postgres.url.replace("postgresql://", "postgresql+psycopg://", 1)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", store, "--serve-artifacts", "--artifacts-destination",
                             str(root / "artifacts"), "--workers", "1"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield url, root / "artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_a_sweep_logs_and_registers_over_http_with_artifacts_on_the_server(tmp_path, mlflow_server, engine):
    """Every child and the parent on the server, nothing RUNNING; the parent's artifacts and the kept models
    live in the server's artifact folder (none under runs/NAME); the registered model loads over HTTP."""
    import mlflow
    from mlflow.tracking import MlflowClient

    url, served = mlflow_server
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
    assert any(p.name == "sweep.yaml" for p in served.rglob("sweep.yaml"))
    assert list(served.rglob("MLmodel")), "the kept models are in the server's artifact folder"
    mlflow.set_tracking_uri(url)
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    assert float(np.asarray(model.predict(np.zeros((1, 1), dtype=np.float32))).ravel()[0]) == pytest.approx(0.9)
    assert client.get_model_version_by_alias(name, "best").run_id == parent[0].data.tags["hpo.best_run_id"]
