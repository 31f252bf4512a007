"""Shared fixtures: real subprocesses of `python -m hpo`, real stores in tmp folders."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

# A tiny sweep: digits, few epochs, Hyperband that can prune from epoch 1.
TINY = """
name: tiny
method: random
metric: {name: val_acc, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 3}
parameters:
  epochs: {value: 9}
  hidden: {values: [16, 32]}
  lr: {distribution: log_uniform_values, min: 1.0e-5, max: 5.0e-2}
  optimizer: {values: [sgd, adam]}
  batch_size: {value: 128}
command: [python, -m, hpo.train, "${args}"]
"""


def run_hpo(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300, check: bool = False):
    """`python -m hpo ARGS` in `cwd`; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=full_env,
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"hpo {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(autouse=True)
def _tracking_uri_stays_put():
    """`mlflow.set_tracking_uri` (tests that load a registered model) also sets $MLFLOW_TRACKING_URI, which
    every later `hpo run` started with this process's environment would then write to: put it back."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def tiny_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(TINY))
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def mlflow_client(sweep_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")


def load_study(sweep_dir: Path, name: str):
    import optuna

    from hpo.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(str(sweep_dir / "optuna.log")))


def runs_of(sweep_dir: Path, name: str):
    """(parent runs, child runs) of the sweep's MLflow experiment."""
    client = mlflow_client(sweep_dir)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, exp, parents, children


# -- a real PostgreSQL server, private to this test session -------------------------------------

def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None



@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """Start a throw-away PostgreSQL on 127.0.0.1 (installed by .ci/run); yield its URL and stop/start."""
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    # Not under pytest's tmp folder: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    root.chmod(0o755)
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text("s3cret-pw\n")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(pg / "initdb"), "-D", str(data), "-U", "hpo", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}"], check=True, capture_output=True)
    port = free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                    "start"], check=True, capture_output=True)
    def ctl(*what: str) -> None:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                        *what], check=True, capture_output=True)

    try:
        yield SimpleNamespace(url=f"postgresql://hpo:s3cret-pw@127.0.0.1:{port}/postgres",
                              stop=lambda: ctl("-m", "immediate", "stop"), start=lambda: ctl("start"))
    finally:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
