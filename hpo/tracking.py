"""MLflow: one parent run per sweep, one child run per trial.

Built on `MlflowClient` (explicit run ids, no global "active run"), so a worker
can hold a child run while the controller holds the parent, in other processes
or on other machines.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from hpo import keys, liveness


T = TypeVar("T")

PARENT_TAG = "mlflow.parentRunId"
STUDY_UID_TAG = keys.STUDY_UID  # the study a parent run belongs to, written to the study before the run exists


def _retry(fn: Callable[[], T]) -> T:
    """SQLite tracking stores say 'database is locked' under parallel writers, or while another
    process holds a long transaction: wait and retry, for at most $HPO_STORAGE_OUTAGE_S seconds."""
    from hpo.storage_outage import StorageDown, bound_s

    deadline, pause = time.monotonic() + bound_s(), 0.05
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - MLflow wraps the driver's error in several types
            if "locked" not in str(exc).lower():
                raise
            if time.monotonic() > deadline:
                raise StorageDown(f"--tracking-uri: the MLflow store stayed locked for {bound_s():.0f} s; "
                                  "run the same command to resume") from None
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def quiet_mlflow() -> None:
    """MLflow's own output that hpo says better, or must not print at all."""
    import logging

    # "Creating initial MLflow database tables..." is noise next to hpo's own progress.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Its store logs a database error with two SQLAlchemy tracebacks, then raises it: hpo reports it in
    # one line (a full disk: "run the same command to resume").
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # MLflow prints "View run ... at: URL" on every run's end, with the URL's password in clear.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


EXIT_UNREACHABLE = 76  # a worker's exit code: the tracking server stopped answering (the controller says so)
_DOWN = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
         "Connection aborted", "Read timed out")


def unreachable(exc: BaseException | None) -> bool:
    """The tracking server did not answer (refused, timed out, dropped), after MLflow's own HTTP retries:
    not a bad request, which the server answered."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("ConnectionError", "NewConnectionError", "MaxRetryError", "ConnectTimeout",
                                  "ReadTimeout") or any(s in str(exc) for s in _DOWN):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _clip(value: Any, limit: int = 6000) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:limit]


@functools.lru_cache(maxsize=1)
def _sqlite_wal() -> None:
    """SQLite stores in WAL mode with NORMAL sync: a commit no longer waits for an fsync of the
    whole database, and readers (the MLflow UI) do not block the workers' writes."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_connection, record):  # noqa: ARG001
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()


class MetricWriter:
    """A worker's writes to its trials' child runs, made by one thread off the trainer's critical path.

    `put` only appends (microseconds). The thread waits up to `linger` seconds for more, then
    writes each run's metrics and tags in one `log_batch` (one SQLite transaction for what used
    to be one per epoch, plus one for the end tags).
    `flush(run_id)` writes what is left for that run at once and returns when it is in the
    store, raising the error if a write failed: a trial's data is complete before it is told
    finished. A process killed outright loses at most the last `linger` seconds of its running
    trial's data; that trial is failed as `worker died` anyway.
    """

    LIMITS = (1000, 100, 100)  # MLflow's log_batch: metrics, params, tags per call (1000 in all)

    def __init__(self, write: Callable[[str, list[Any], list[Any], list[Any]], None], linger: float = 1.0):
        self._write, self._linger = write, linger
        self._cv = threading.Condition()
        self._pending: dict[str, tuple[list[Any], list[Any], dict[str, Any]]] = {}
        self._busy: set[str] = set()
        self._errors: dict[str, BaseException] = {}
        self._urgent = 0  # flushes waiting: write now, do not linger
        self._thread: threading.Thread | None = None

    def put(self, run_id: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
        with self._cv:
            m, p, t = self._pending.setdefault(run_id, ([], [], {}))
            m.extend(metrics)
            p.extend(params)
            t.update({tag.key: tag for tag in tags})  # a tag set twice: the last value
            if self._thread is None:
                thread = threading.Thread(target=self._loop, name="hpo-mlflow-writer", daemon=True)
                thread.start()
                self._thread = thread  # only once it runs: a start that failed is tried again
            self._cv.notify_all()

    def failed(self, run_id: str) -> BaseException | None:
        """The error a write of this run met (kept for its flush), or None."""
        with self._cv:
            return self._errors.get(run_id)

    def flush(self, run_id: str, raise_errors: bool = True) -> None:
        with self._cv:
            self._urgent += 1
            try:
                self._cv.notify_all()
                self._cv.wait_for(lambda: run_id not in self._pending and run_id not in self._busy)
            finally:  # a SIGTERM may land while waiting
                self._urgent -= 1
            error = self._errors.pop(run_id, None)
        if error is not None and raise_errors:
            raise error

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending)
                self._cv.wait_for(lambda: self._urgent, timeout=self._linger)
                work, self._pending = self._pending, {}
                self._busy = set(work)
            for run_id, (metrics, params, tags) in work.items():
                error = self._errors.get(run_id)  # after a failure, the trial fails at its flush
                try:
                    for chunk in [] if error is not None else chunks(metrics, params, list(tags.values())):
                        self._write(run_id, *chunk)
                except BaseException as exc:  # noqa: BLE001 - handed to the trial at its flush
                    error = exc
                with self._cv:
                    if error is not None:
                        self._errors[run_id] = error
                    self._busy.discard(run_id)
                    self._cv.notify_all()


def chunks(metrics: list[Any], params: list[Any], tags: list[Any]) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """(metrics, params, tags) in as few `log_batch` calls as MLflow's limits allow."""
    out = []
    lm, lp, lt = MetricWriter.LIMITS
    while metrics or params or tags or not out:
        p, t = params[:lp], tags[:lt]
        m = metrics[: lm - len(p) - len(t)]
        out.append((m, p, t))
        metrics, params, tags = metrics[len(m):], params[len(p):], tags[len(t):]
    return out


class Tracker:
    """Thin, retrying wrapper over MlflowClient for hpo's run layout."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        self.uri = tracking_uri
        if tracking_uri.startswith("sqlite:"):
            _sqlite_wal()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._writer: MetricWriter | None = None

    # -- parent ---------------------------------------------------------
    def experiment(self, name: str, artifact_dir: Path | None = None) -> str:
        found = _retry(lambda: self.client.get_experiment_by_name(name))
        if found is not None:
            if found.lifecycle_stage == "deleted":
                _retry(lambda: self.client.restore_experiment(found.experiment_id))
            return found.experiment_id
        location = artifact_dir.resolve().as_uri() if artifact_dir else None
        return _retry(lambda: self.client.create_experiment(name, artifact_location=location))

    def start_parent(self, experiment_id: str, name: str, params: Mapping[str, Any],
                     tags: Mapping[str, str], resume_id: str | None = None) -> str:
        """Create the sweep's parent run, or reopen it when the sweep is resumed.

        A controller killed after creating the run but before the study recorded its id leaves a parent
        the study does not name: it is found by its `hpo.study_uid` tag and reopened, not made twice."""
        if not resume_id and tags.get(STUDY_UID_TAG):
            where = f"tags.`{STUDY_UID_TAG}` = '{tags[STUDY_UID_TAG]}'"
            found = _retry(lambda: self.client.search_runs([experiment_id], filter_string=where, max_results=50))
            found = sorted((r for r in found if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
            if found:
                resume_id = found[0].info.run_id
                self.fill_params(resume_id, params)
        if resume_id:
            try:
                run = _retry(lambda: self.client.get_run(resume_id))
                if run.info.lifecycle_stage == "active":
                    _retry(lambda: self.client.update_run(resume_id, status="RUNNING"))
                    self.set_tags(resume_id, tags)
                    return resume_id
            except Exception:  # noqa: BLE001 - a parent deleted by hand: start a new one
                pass
        run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=dict(tags)))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_texts(self, run_id: str, texts: Mapping[str, str | bytes], folder: str | None = None) -> None:
        """Files (text or bytes) as artifacts of a run (under `folder`)."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in texts.items():
                path = Path(tmp) / name
                path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
                _retry(lambda n=name: self.client.log_artifact(run_id, str(Path(tmp) / n), folder))

    def finish_parent(self, run_id: str, status: str, metrics: Mapping[str, float],
                      tags: Mapping[str, str], artifacts: Mapping[str, str]) -> None:
        """Summary metrics, best-trial tags, sweep.yaml as an artifact, end status."""
        self.log_metrics(run_id, 0, metrics)
        self.set_tags(run_id, tags)
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in artifacts.items():
                (Path(tmp) / name).write_text(text)
                _retry(lambda n=name: self.client.log_artifact(run_id, str(Path(tmp) / n)))
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    # -- children -------------------------------------------------------
    def start_child(self, experiment_id: str, parent_id: str, name: str,
                    params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The trial's child run, with its params written before the trainer starts: a worker killed at any
        moment leaves a run that still says what it tried (the params are not queued with the metrics)."""
        tags = {**tags, PARENT_TAG: parent_id}
        liveness.guard()
        run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=tags))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end_child(self, run_id: str, status: str, tags: Mapping[str, str] | None = None,
                  strict: bool = False) -> None:
        """Tags, then the MLflow end status (FINISHED / KILLED / FAILED). Use hpo.trial.close_child.
        What this worker still holds for the run (metrics, params) goes in the same write as the tags;
        `strict`: a failed write raises before the run is ended (the caller ends it with its own verdict)."""
        liveness.guard()  # a worker woken after its lease ran out: the controller closed this run already
        if self._writer is not None:
            from mlflow.entities import RunTag

            self._writer.put(run_id, tags=[RunTag(k, _clip(v, 5000)) for k, v in (tags or {}).items()])
            self._writer.flush(run_id, raise_errors=strict)
        else:
            self.set_tags(run_id, dict(tags or {}))
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    # -- batched logging ------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _clip(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(lambda b=items[i : i + 100]: self.client.log_batch(run_id, params=b))

    def fill_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """The params of a run whose maker may have been killed between `create_run` and `log_params`; a run that
        has them already keeps them (a param never changes its value: MLflow refuses a second, different one)."""
        try:
            self.log_params(run_id, params)
        except Exception:  # noqa: BLE001 - already written
            pass

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:
            _retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, _clip(v, 5000)) for k, v in tags.items()]))

    def log_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """All of one step's metrics in one call, written now."""
        batch = _metrics(step, metrics)
        if batch:
            self._write_metrics(run_id, batch)

    def queue_metrics(self, run_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """One step's metrics, written by the background writer; `flush(run_id)` before trusting them."""
        batch = _metrics(step, metrics)
        writer = self._writes()
        error = writer.failed(run_id)
        if error is not None:  # the store refused an earlier write: stop the trial now, not hours later
            raise error
        if batch:
            writer.put(run_id, metrics=batch)

    def flush(self, run_id: str) -> None:
        """Everything queued for the run is in the store; raises what a failed write raised."""
        if self._writer is not None:
            self._writer.flush(run_id)

    def _writes(self) -> MetricWriter:
        if self._writer is None:
            self._writer = MetricWriter(self._write_batch)
        return self._writer

    def _write_metrics(self, run_id: str, batch: list[Any]) -> None:
        _retry(lambda: self.client.log_batch(run_id, metrics=batch))

    def _write_batch(self, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
        liveness.guard()
        _retry(lambda: self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags))

    # -- queries ----------------------------------------------------------
    def get_run(self, run_id: str) -> Any:
        return _retry(lambda: self.client.get_run(run_id))

    def kept(self, experiment_id: str, parent_id: str) -> list[tuple[Any, float, str]]:
        """The parent's child runs that keep a model now: (run, the value it was ranked by, model URI)."""
        where = f"tags.{PARENT_TAG} = '{parent_id}' and tags.`{keys.KEPT}` = 'true'"
        runs = _retry(lambda: self.client.search_runs([experiment_id], filter_string=where, max_results=50000))
        return [(r, float(r.data.tags[keys.KEPT_VALUE]), r.data.tags.get(keys.MODEL_URI, "")) for r in runs
                if keys.KEPT_VALUE in r.data.tags]

    def children(self, experiment_id: str, parent_id: str, running_only: bool = False) -> list[Any]:
        """The parent's child runs (only those still RUNNING: the store filters, nothing else is fetched)."""
        where = f"tags.{PARENT_TAG} = '{parent_id}'" + (" and attributes.status = 'RUNNING'" if running_only else "")
        return _retry(lambda: self.client.search_runs([experiment_id], filter_string=where, max_results=50000))


def _metrics(step: int, metrics: Mapping[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def is_local(uri: str) -> bool:
    """A store on this machine's disk (SQLite, a file store): its artifacts go beside the sweep."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def checkpoint(uri: str) -> None:
    """Fold a SQLite store's write-ahead log into the database file, so `mlflow.db` alone holds everything
    (hpo exits without closing its connections; copying the file then misses nothing)."""
    import sqlite3

    path = sqlite_path(uri)
    if path is not None and path.exists():
        with sqlite3.connect(path, timeout=30) as con:
            con.execute("pragma wal_checkpoint(TRUNCATE)")


def default_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{(sweep_dir / 'mlflow.db').resolve()}"

