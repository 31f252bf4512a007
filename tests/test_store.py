"""The SQLite MLflow store: made whole or not at all, whatever instant a kill lands, and by one process at a time."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpo import mlflow_store

ENSURE = "import sys; from hpo import mlflow_store; mlflow_store.ensure(sys.argv[1])"


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


def _open_with_mlflow(db: Path) -> str:
    """What every later open does: MLflow's own client on the file (it refuses a half-made schema)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=_uri(db))
    return client.create_experiment(f"e{time.monotonic_ns()}")


def test_the_private_mlflow_names_hpo_relies_on_still_exist():
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    assert isinstance(_get_latest_schema_revision(), str)
    assert isinstance(SqlAlchemyStore._engine_map, dict)


def test_a_new_store_is_whole_and_opens(tmp_path):
    db = tmp_path / "runs" / "s" / "mlflow.db"
    assert mlflow_store.ensure(_uri(db))
    assert mlflow_store.is_whole(db)
    assert not list(db.parent.glob(".*building*")), "nothing left beside it"
    assert _open_with_mlflow(db)
    assert not mlflow_store.ensure(_uri(db)), "a whole store is left alone"


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_store_left_mid_migration_is_made_again(tmp_path, where):
    """The power-cut failure: MLflow ran a migration step (a column added) and was killed before it recorded
    the step's version, so every later open failed with `duplicate column name`."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
    from sqlalchemy import create_engine

    db = tmp_path / "mlflow.db"
    engine = create_engine(_uri(db))
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(_uri(db))
    revisions = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
    target = revisions[int(len(revisions) * where)]
    with engine.begin() as con:
        config.attributes["connection"] = con
        command.upgrade(config, target.revision)
    with sqlite3.connect(db) as con:  # its DDL ran, its version was never written
        con.execute("update alembic_version set version_num = ?", (target.down_revision,))
    engine.dispose()
    assert not mlflow_store.is_whole(db)
    assert mlflow_store.ensure(_uri(db))
    assert mlflow_store.is_whole(db) and _open_with_mlflow(db)


def test_a_store_that_holds_runs_is_never_rebuilt(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    mlflow_store.ensure(_uri(db))
    client = MlflowClient(tracking_uri=_uri(db))
    run = client.create_run(client.create_experiment("keep"))
    with sqlite3.connect(db) as con:  # an older schema, as after an MLflow upgrade
        con.execute("update alembic_version set version_num = 'an-older-one'")
        con.execute("create table _alembic_tmp_runs (x integer)")
    assert not mlflow_store.ensure(_uri(db))
    with sqlite3.connect(db) as con:
        assert con.execute("select run_uuid from runs").fetchall() == [(run.info.run_id,)]
        assert not con.execute("select name from sqlite_master where name like '_alembic_tmp%'").fetchall()


@pytest.mark.parametrize("path", ["migrations", "template"])
def test_a_kill_at_any_instant_leaves_no_store_or_a_whole_one(tmp_path, monkeypatch, path):
    """SIGKILL the process making a new store at random instants of its life (imports, tables, the fifty
    migrations or the copy of the kept empty store, the rename): after each, the next start finds nothing or
    a whole store, never half of one."""
    cache = tmp_path / "cache"
    if path == "migrations":
        cache.write_text("a file where the cache folder would be: no template can be kept")
    monkeypatch.setenv("HPO_CACHE_DIR", str(cache))
    rng = random.Random(11)
    if path == "template":  # the first build keeps the template: every build below is a copy
        subprocess.run([sys.executable, "-c", ENSURE, _uri(tmp_path / "first" / "mlflow.db")], check=True)
    started = time.monotonic()  # how long one build of this path takes, to spread the kills over it
    subprocess.run([sys.executable, "-c", ENSURE, _uri(tmp_path / "timing" / "mlflow.db")], check=True)
    whole = time.monotonic() - started
    assert cache.is_dir() == (path == "template")
    seen = set()
    for i in range(4):
        db = tmp_path / f"r{i}" / "mlflow.db"
        db.parent.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", ENSURE, _uri(db)])
        time.sleep((0.1 if i == 0 else rng.uniform(0.3, 1.0)) * whole)  # the first kill early, whatever the load
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.add("made" if db.exists() else "none")
        assert not db.exists() or mlflow_store.is_whole(db), f"round {i}: a half-made store"
        mlflow_store.ensure(_uri(db))  # the next start (in this process: the same code, without its imports)
        assert mlflow_store.is_whole(db) and _open_with_mlflow(db)
        assert not list(db.parent.glob(".*building*")), "the killed build's file is cleared"
    assert "none" in seen, seen  # some kills landed while the store was being made


def test_a_new_store_is_copied_from_the_kept_empty_one(tmp_path, monkeypatch):
    """The migrations run once per MLflow schema: later stores are copies of the kept empty one, each with its
    default experiment's artifacts beside it; a damaged copy is ignored."""
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert mlflow_store.ensure(_uri(first))
    template = mlflow_store.template_path()
    assert template.parent == tmp_path / "cache" and mlflow_store.is_whole(template)
    kept = template.stat().st_mtime_ns
    assert mlflow_store.ensure(_uri(second))
    assert template.stat().st_mtime_ns == kept, "copied from the kept store, not migrated (and kept again)"
    with sqlite3.connect(second) as con:
        assert con.execute("select artifact_location from experiments where experiment_id = 0").fetchone() == (
            f"{(second.parent / 'artifacts').resolve().as_uri()}/0",)
    assert mlflow_store.is_whole(second) and _open_with_mlflow(second)
    template.write_bytes(b"not a database")
    third = tmp_path / "c" / "mlflow.db"
    assert mlflow_store.ensure(_uri(third))
    assert mlflow_store.is_whole(third) and _open_with_mlflow(third)
    assert mlflow_store.is_whole(template), "a damaged copy is replaced by a good one"


def test_concurrent_first_starts_make_one_store(tmp_path):
    db = tmp_path / "mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE, _uri(db)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert mlflow_store.is_whole(db) and _open_with_mlflow(db)


def test_a_store_writes_small_pages_and_checkpoints_seldom(tmp_path, monkeypatch):
    """What keeps bytes written per trial down (bench/RESULTS.md, "Bytes written"): a new store has 1-KiB pages,
    whether migrated or copied from the kept empty one, and hpo's connections fold the write-ahead log into the
    file only every 10,000 pages. A trial's writes then cost a quarter of the WAL bytes of 4-KiB pages."""
    from hpo.tracking import Tracker

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    migrated, copied = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert mlflow_store.ensure(_uri(migrated)) and mlflow_store.ensure(_uri(copied))
    for db in (migrated, copied, mlflow_store.template_path()):
        with sqlite3.connect(db) as con:
            assert con.execute("pragma page_size").fetchone() == (mlflow_store.PAGE_SIZE,) == (1024,), db
    tracker = Tracker(_uri(copied))
    exp = tracker.experiment("pages")
    parent = tracker.start_parent(exp, "p", {"x": 1}, {})  # a write: the pragmas ran on its connection
    with tracker.client._tracking_client.store.engine.connect() as con:  # the store's own pooled connection
        assert con.exec_driver_sql("pragma wal_autocheckpoint").fetchone() == (10000,)
        assert con.exec_driver_sql("pragma journal_mode").fetchone() == ("wal",)
    assert tracker.get_run(parent).data.params == {"x": "1"}
