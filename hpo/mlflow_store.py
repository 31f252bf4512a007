"""A SQLite MLflow store that is never half-made.

MLflow builds a new SQLite store in place: it creates the first tables, then runs some fifty alembic
migrations, each its own transaction. A kill in between leaves a file that every later open refuses
(`duplicate column name`, `_alembic_tmp_*` tables, an old schema version), and two controllers that
start the same new sweep at once race through the same migrations.

So hpo builds a new store beside its final path, under a lock on the folder, and links it into place
only once its schema is MLflow's head revision: a kill at any instant leaves either no store or a
whole one (and at worst a stray `.mlflow.db.*.building` file, removed by the next start). A store
left half-made by an older hpo is rebuilt when it holds no run; one that holds runs is left to
MLflow's own upgrade.

Running the migrations costs ~2 s of CPU per new store, so the first build also keeps an empty copy
(`~/.cache/hpo/`, per schema revision; `HPO_CACHE_DIR` moves it) and later builds start from that copy,
checked whole before it is used.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from pathlib import Path
from hpo.folder_lock import folder_lock
from hpo.tracking import quiet_mlflow, sqlite_path

BUILDING = ".building"  # suffix of a store being made; never opened by anyone else
# SQLite writes whole pages: every page a commit touches goes into the write-ahead log, then again into the
# file at a checkpoint. A trial touches ~36 pages (each of its ~20 tags, params and metrics lands in its own
# key's part of MLflow's key-first indexes), so 1-KiB pages write a quarter of what the default 4 KiB do.
PAGE_SIZE = 1024


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The schema revision this MLflow makes (its alembic head)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # private: pinned by tests/test_store.py

    return _get_latest_schema_revision()


def is_whole(path: Path) -> bool:
    """Whether the file is an MLflow store at this MLflow's head revision with no migration left half-way."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return False
    try:
        with con:
            version = con.execute("select version_num from alembic_version").fetchall()
            leftovers = con.execute(
                r"select count(*) from sqlite_master where type='table' and name like '\_alembic\_tmp\_%' escape '\'"
            ).fetchone()[0]
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return version == [(head_revision(),)] and not leftovers


def has_runs(path: Path) -> bool:
    """Whether a SQLite file holds any MLflow run (False for a missing or half-made file)."""
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as con:
            return con.execute("select count(*) from runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def ensure(uri: str) -> bool:
    """Make the SQLite store at `uri` whole before anyone opens it; returns whether it was (re)built.
    Other URIs (a tracking server, PostgreSQL) are left to MLflow."""
    path = sqlite_path(uri)
    if path is None or (path.exists() and is_whole(path)):
        return False  # the common case, without a lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent):
        for stray in path.parent.glob(f".{path.name}.*{BUILDING}*"):  # a build that was killed
            stray.unlink(missing_ok=True)
        if path.exists():
            if is_whole(path):
                return False  # another controller made it while this one waited
            if has_runs(path):
                _drop_migration_leftovers(path)  # an upgrade of a real store: MLflow's own migration goes on
                return False
        _publish(_build(path), path)
    return True


def template_path() -> Path:
    """Where an empty whole store of this MLflow's schema is kept, to copy rather than migrate again."""
    root = os.environ.get("HPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpo")
    return Path(root) / f"mlflow-{head_revision()}-p{PAGE_SIZE}.db"


def _build(path: Path) -> Path:
    """A new store beside `path`, its schema complete, in rollback-journal mode (no -wal file to carry)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{BUILDING}")
    tmp.unlink(missing_ok=True)
    if not _from_template(tmp, path.parent / "artifacts"):
        _migrate(tmp, path.parent / "artifacts")
        _keep_template(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _from_template(tmp: Path, artifacts: Path) -> bool:
    """Copy the kept empty store to `tmp`, its default experiment pointed at `artifacts`; False if there is
    no usable copy."""
    template = template_path()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{template}?mode=ro", uri=True, timeout=5)) as src, \
                contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
            with dst:
                dst.execute("update experiments set artifact_location = ? where experiment_id = 0",
                            (f"{artifacts.resolve().as_uri()}/0",))  # where MLflow itself puts it
    except (sqlite3.Error, OSError):
        tmp.unlink(missing_ok=True)
        return False
    if is_whole(tmp) and not has_runs(tmp):
        return True
    tmp.unlink(missing_ok=True)
    return False


def _keep_template(tmp: Path) -> None:
    """Keep an empty copy of a freshly migrated store for the next build (best effort: a read-only home
    only costs the next build its migrations)."""
    template = template_path()
    part = template.with_name(f".{template.name}.{os.getpid()}{BUILDING}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(tmp)) as src, contextlib.closing(sqlite3.connect(part)) as dst:
            src.backup(dst)
        os.replace(part, template)
    except (sqlite3.Error, OSError):
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)


def _migrate(tmp: Path, artifacts: Path) -> None:
    """Make MLflow's schema in `tmp` by running its migrations."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    quiet_mlflow()
    with contextlib.closing(sqlite3.connect(tmp)) as con:  # the page size holds from the file's first page on
        con.execute(f"pragma page_size={PAGE_SIZE}")
        con.execute("vacuum")
    uri = f"sqlite:///{tmp}"
    store = SqlAlchemyStore(uri, artifacts.resolve().as_uri())
    store.engine.dispose()
    SqlAlchemyStore._engine_map.pop(uri, None)  # this file is about to be renamed: no engine may keep it
    with contextlib.closing(sqlite3.connect(tmp)) as con:
        con.execute("pragma wal_checkpoint(TRUNCATE)")
        con.execute("pragma journal_mode=DELETE")
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def _publish(tmp: Path, path: Path) -> None:
    """Rename the whole store into place (over a half-made one that holds no run), durably."""
    for suffix in ("-wal", "-shm", "-journal"):  # the half-made file's logs must not be replayed into the new one
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_migration_leftovers(path: Path) -> None:
    """alembic's `_alembic_tmp_*` tables from a batch migration that was killed: every later open fails on them."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as con, con:
        names = [r[0] for r in con.execute(
            r"select name from sqlite_master where type='table' and name like '\_alembic\_tmp\_%' escape '\'")]
        for name in names:
            con.execute(f'drop table if exists "{name}"')
