"""Shared fixtures: real subprocesses of `python -m hpo`, real stores in tmp folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import servers

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


free_port = servers.free_port


@pytest.fixture(scope="module")
def ray_temp_dir():
    """A short folder for `ray start --temp-dir`: Ray's Unix sockets live in it, and a socket's path may not pass
    107 bytes, which pytest's tmp folders do under pytest-xdist (`/tmp/pytest-of-u/pytest-N/popen-gw0/...`)."""
    root = Path(tempfile.mkdtemp(prefix="ray-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


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


def assert_optuna_reads(study) -> None:
    """Optuna's public API and optuna-dashboard's study API read the study hpo wrote (a COMPLETE trial with
    no value breaks both: `best_trial` raises TypeError, the dashboard answers 500 on the study's page)."""
    import optuna
    import optuna_dashboard
    from wsgiref.util import setup_testing_defaults

    summaries = optuna.get_all_study_summaries(study._storage)  # noqa: SLF001
    assert study.study_name in [s.study_name for s in summaries]
    if len(study.directions) > 1:
        assert study.best_trials
    elif any(t.state.name == "COMPLETE" for t in study.trials):
        assert study.best_trial.value is not None
    assert len(study.trials_dataframe()) == len(study.trials)
    app = optuna_dashboard.wsgi(study._storage)  # noqa: SLF001
    for path in ("/api/studies", f"/api/studies/{study._study_id}"):  # noqa: SLF001
        env: dict = {}
        setup_testing_defaults(env)
        env["PATH_INFO"] = path
        answer: dict = {}
        body = b"".join(app(env, lambda status, headers, exc=None: answer.setdefault("status", status)))
        assert answer["status"].startswith("200"), (path, answer["status"], body[:300])


def runs_of(sweep_dir: Path, name: str):
    """(parent runs, child runs) of the sweep's MLflow experiment."""
    client = mlflow_client(sweep_dir)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, exp, parents, children


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`, read from /proc: a controller's workers or agents (its fork
    server, hpo.forkserver, is not one of them)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and b"hpo.forkserver" not in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def session_pids(sid: int) -> list[int]:
    """The pids of session `sid` (a process a test started with `start_new_session=True`, and all it started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    pids.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def end_session(sid: int, grace: float = 5.0) -> None:
    """SIGTERM every process of session `sid`, SIGKILL what is left after `grace` s: what a test's `ray start`
    started, and nothing else (`ray stop` stops every Ray on the machine, a parallel test's too)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and [p for p in session_pids(sid) if pid_alive(p)]:
            time.sleep(0.1)


# -- real servers on 127.0.0.1 (tests/servers.py): started once for the run, up again for every module -----
@pytest.fixture(scope="session")
def _postgres_server():
    if servers.pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    pg = servers.start_postgres()
    try:
        yield pg
    finally:
        pg.shutdown()


@pytest.fixture(scope="module")
def postgres(_postgres_server):
    """A throw-away PostgreSQL: its URL, and stop/start for outage tests. One server for the run (initdb
    once), running again before and after each module whatever a test did to it; tests use their own
    study names."""
    _postgres_server.ensure_up()
    yield _postgres_server
    _postgres_server.ensure_up()


@pytest.fixture
def far_timezone():
    """The RDB keeps UTC and Optuna gives local time: not the same here (the tests' machines run in UTC)."""
    was = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    os.environ.pop("TZ") if was is None else os.environ.update(TZ=was)
    time.tzset()


@pytest.fixture(params=["sqlite", "postgresql"])
def rdb_url(request, tmp_path):
    """An empty Optuna RDB: a SQLite file, and a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    pg = request.getfixturevalue("postgres")
    name = f"rdb_{uuid.uuid4().hex[:12]}"  # the last test's connections may still hold theirs open
    return servers.create_database(pg.url, name).replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(scope="session")
def _mlflow_server(_postgres_server):
    server = servers.start_mlflow_server(_postgres_server.url)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, _mlflow_server):
    """`mlflow server` on 127.0.0.1, PostgreSQL behind it, artifacts served over HTTP; `.restart()`. One for
    the run (MLflow's migrations on PostgreSQL once), running again before and after each module."""
    _mlflow_server.ensure_up()
    yield _mlflow_server
    _mlflow_server.ensure_up()
