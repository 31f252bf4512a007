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
    return _rdb_fingerprint(storage_url, study_name)


def _rdb_fingerprint(url: str, study_name: str) -> Any:
    """Counts per state, the newest trial, the newest intermediate value, the study's attributes: from
    Optuna's own tables (its schema, as `optuna storage upgrade` keeps it), without loading a trial."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as con:
            sid = con.execute(sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": study_name}).scalar()
            if sid is None:
                return None
            states = con.execute(sa.text("SELECT state, COUNT(*), MAX(trial_id) FROM trials WHERE study_id = :s "
                                         "GROUP BY state ORDER BY state"), {"s": sid}).all()
            newest = con.execute(sa.text(
                "SELECT MAX(v.trial_intermediate_value_id) FROM trial_intermediate_values v JOIN trials t "
                "ON v.trial_id = t.trial_id WHERE t.study_id = :s AND t.state = 'RUNNING'"), {"s": sid}).scalar()
            attrs = con.execute(sa.text("SELECT COUNT(*), MAX(study_user_attribute_id) FROM study_user_attributes "
                                        "WHERE study_id = :s"), {"s": sid}).one()
    finally:
        engine.dispose()
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
