"""Real servers on 127.0.0.1 for the tests and the benchmarks: a private PostgreSQL, an `mlflow server`.

Plain functions (no pytest): conftest.py wraps them in fixtures, bench/bench_ops.py calls them directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def start_postgres() -> SimpleNamespace:
    """A throw-away PostgreSQL on 127.0.0.1 (installed by .ci/run): url, stop(), start(), shutdown()."""
    pg = pg_bin()
    assert pg is not None, "PostgreSQL is not installed (.ci/run installs it)"
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

    def ctl(*what: str, check: bool = True) -> None:
        subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w",
                        *what], check=check, capture_output=True)

    def shutdown() -> None:
        ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)

    def ensure_up() -> None:
        if subprocess.run([*as_user, str(pg / "pg_ctl"), "-D", str(data), "status"], capture_output=True).returncode:
            ctl("start")

    ctl("start")
    return SimpleNamespace(url=f"postgresql://hpo:s3cret-pw@127.0.0.1:{port}/postgres",
                           stop=lambda: ctl("-m", "immediate", "stop"), start=lambda: ctl("start"), shutdown=shutdown,
                           ensure_up=ensure_up)


def create_database(url: str, name: str) -> str:
    """A fresh database `name` on the server of `url`; returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name}")
        con.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store and served artifacts; `restart()` keeps
    its port, store and artifact folder (as a server restarted by its supervisor)."""

    def __init__(self, store: str, root: Path):
        self.store, self.root, self.port = store, root, free_port()
        self.url, self.artifacts = f"http://127.0.0.1:{self.port}", root / "artifacts"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.store, "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
             "--workers", "1"], cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # no job runner: MLflow 3 starts five huey consumer processes (GenAI jobs) hpo never uses
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        log.close()
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        self.start()

    def requests(self) -> list[str]:
        """The requests the server answered so far, as uvicorn logged them: 'POST /api/2.0/mlflow/...'."""
        text = (self.root / "server.log").read_text(errors="replace")
        return [line.split('"')[1].rsplit(" ", 1)[0] for line in text.splitlines() if 'HTTP/1.1"' in line]


def start_mlflow_server(postgres_url: str) -> MlflowServer:
    """`mlflow server` with its own PostgreSQL database (MLflow's and Optuna's schemas both keep
    `alembic_version`, so they cannot share one) and served artifacts."""
    store = create_database(postgres_url, "mlflow").replace("postgresql://", "postgresql+psycopg://", 1)
    server = MlflowServer(store, Path(tempfile.mkdtemp(prefix="hpo-mlflow-server-")))
    server.start()
    return server
