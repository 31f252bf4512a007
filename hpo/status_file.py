"""`runs/NAME/status.json`: what `hpo status` and `hpo best` print, kept by the controller, so that a person's
question does not replay a 100,000-trial journal or read every trial from the database.

The controller rewrites it (atomically) when what it says changes, at most every `min_interval` seconds, and
once more when the sweep ends, with a fingerprint of the study's store as it was read. A reader uses it
  - while its controller runs on this machine and wrote it in the last `FRESH_S` seconds (it lags the study
    by at most a poll, as the live view does), or
  - when the store's fingerprint is still the one recorded: nothing has been written to the study since (a
    journal's size; for an RDB storage, one query: the study's trials per state, its newest trial and
    intermediate value).
Anything else (no file, another machine's controller, a worker that wrote after the end) is read from the
study as before. `HPO_STATUS_FILE=0` turns it off.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from hpo.redact import is_rdb

NAME = "status.json"
FRESH_S = 5.0
VERSION = 1


def enabled() -> bool:
    return os.environ.get("HPO_STATUS_FILE", "1") != "0"


def fingerprint(storage_url: str, study_name: str) -> Any:
    """Something that changes whenever the study's trials do: a journal's size, an RDB query's answer."""
    if not is_rdb(storage_url):
        try:
            return os.stat(storage_url).st_size
        except OSError:
            return None
    try:
        return _rdb_fingerprint(storage_url, study_name)
    except Exception:  # noqa: BLE001 - no answer: the file is not trusted, and reading the study says what is wrong
        return None


FINGERPRINT_SQL = (  # named parameters :n (the study's name) and :s (its id); Optuna's own tables
    "SELECT study_id FROM studies WHERE study_name = :n",
    "SELECT state, COUNT(*), MAX(trial_id) FROM trials WHERE study_id = :s GROUP BY state ORDER BY state",
    "SELECT MAX(v.trial_intermediate_value_id) FROM trial_intermediate_values v JOIN trials t "
    "ON v.trial_id = t.trial_id WHERE t.study_id = :s AND t.state = 'RUNNING'",
    "SELECT COUNT(*), MAX(study_user_attribute_id) FROM study_user_attributes WHERE study_id = :s",
)


def _rdb_fingerprint(url: str, study_name: str) -> Any:
    """Counts per state, the newest trial, the newest intermediate value, the study's attributes: from
    Optuna's own tables (its schema, as `optuna storage upgrade` keeps it), without loading a trial.
    SQLite and PostgreSQL are asked with their own drivers (importing SQLAlchemy is most of a 0.45-s answer);
    any other database through SQLAlchemy."""
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        import sqlite3

        path = url[len("sqlite:///"):].split("?", 1)[0]
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)  # never makes a file
        try:
            return _fingerprint_with(lambda q, p: con.execute(q, p).fetchall(), study_name)
        finally:
            con.close()
    if scheme in ("postgresql", "postgresql+psycopg", "postgres"):
        try:
            import psycopg
        except ImportError:
            psycopg = None
        if psycopg is not None:
            with psycopg.connect("postgresql://" + url.split("://", 1)[1]) as con:
                return _fingerprint_with(
                    lambda q, p: con.execute(q.replace(":n", "%(n)s").replace(":s", "%(s)s"), p).fetchall(), study_name)
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as con:
            return _fingerprint_with(lambda q, p: con.execute(sa.text(q), p).all(), study_name)
    finally:
        engine.dispose()


def _fingerprint_with(ask: Any, study_name: str) -> Any:
    """`ask(sql, params)` -> rows, for each of FINGERPRINT_SQL."""
    found = ask(FINGERPRINT_SQL[0], {"n": study_name})
    if not found:
        return None
    sid = found[0][0]
    states = ask(FINGERPRINT_SQL[1], {"s": sid})
    newest = ask(FINGERPRINT_SQL[2], {"s": sid})[0][0]
    attrs = ask(FINGERPRINT_SQL[3], {"s": sid})[0]
    return [[str(s), int(n), int(m)] for s, n, m in states] + [newest, list(attrs)]


def write(path: Path, status: dict[str, Any], best: dict[str, Any], store: Any = None, final: bool = False,
          spec: str | None = None) -> None:
    """`spec`: the study's recorded sweep (hpo.spec), for `hpo best` to say a sweep has no metric."""
    payload = {"version": VERSION, "status": status, "best": best, "store": store, "final": final, "spec": spec,
               "host": socket.gethostname(), "pid": os.getpid(), "updated": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(payload, default=str))
    tmp.replace(path)


def read(path: Path, storage_url: str, study_name: str) -> dict[str, Any] | None:
    """The file's content when it may be trusted (see the module's docstring), else None."""
    if not enabled():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != VERSION or data.get("status", {}).get("study") != study_name:
        return None
    if _live(data):
        return data
    if data.get("store") is not None and data["store"] == _json(fingerprint(storage_url, study_name)):
        return data
    return None


def _live(data: dict[str, Any]) -> bool:
    if data.get("final") or data.get("host") != socket.gethostname() or time.time() - data.get("updated", 0) > FRESH_S:
        return False
    try:
        os.kill(int(data["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _json(value: Any) -> Any:
    """As the value reads back from the file (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
