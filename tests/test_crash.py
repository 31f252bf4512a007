"""The machine under the sweep fails: partial journal records, a full disk, everything SIGKILLed at once.

Checked like a database: after each fault the same command runs the sweep to its
budget, and Optuna's and MLflow's own clients must agree on every trial.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import assert_optuna_reads, run_hpo, runs_of, write
from hpo.trial import INFRA_REASONS

TESTS = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS)}


# -- the journal's recovery rule ---------------------------------------------------------------
def _plain_optuna(journal: Path, name: str) -> optuna.Study:
    """The study as Optuna itself reads it, without any of hpo's code."""
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


def test_a_partial_record_is_cut_before_the_next_append(tmp_path):
    from hpo.storage import open_storage

    journal = tmp_path / "optuna.log"
    study = optuna.create_study(study_name="j", storage=open_storage(str(journal)))
    study.enqueue_trial({"x": 1})
    with open(journal, "ab") as f:  # a writer that died half-way through a record
        f.write(b'{"op_code":5,"worker_id":"w","trial_id":0,"us')
    study = optuna.load_study(study_name="j", storage=open_storage(str(journal)))
    study.enqueue_trial({"x": 2})
    study.enqueue_trial({"x": 3})
    assert journal.read_bytes().endswith(b"\n")
    assert [t.params.get("x", t.system_attrs.get("fixed_params", {}).get("x"))
            for t in _plain_optuna(journal, "j").get_trials()] == [1, 2, 3], "Optuna reads every record"
    aside = (tmp_path / "optuna.log.partial").read_bytes()
    assert b'"trial_id":0,"us' in aside, "the cut record is kept for inspection"


def test_without_the_rule_the_journal_is_unreadable(tmp_path):
    """Why the rule exists: Optuna's own backend appends after a partial record, and then cannot read the file."""
    journal = tmp_path / "optuna.log"
    optuna.create_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(journal))))
    with open(journal, "ab") as f:
        f.write(b'{"op_code":5,"work')
    backend = JournalFileBackend(str(journal))
    backend.append_logs([{"op_code": 4, "worker_id": "w", "study_id": 0, "user_attr": {"a": 1}}] * 2)
    with pytest.raises(ValueError):
        list(JournalFileBackend(str(journal)).read_logs(0))


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MB filesystem (tmpfs) that a test can fill; skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {out.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the filesystem until `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        block = b"\0" * (1 << 20)
        while True:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            if free <= leave:
                break
            try:
                f.write(block[: max(1, min(len(block), free - leave))])
                f.flush()
            except OSError:
                break
    return filler


def test_an_append_that_hits_a_full_disk_leaves_no_partial_record(small_disk):
    from hpo.storage import open_storage

    journal = small_disk / "optuna.log"
    study = optuna.create_study(study_name="j", storage=open_storage(str(journal)))
    filler = fill(small_disk, leave=4096)
    with pytest.raises(OSError):
        for i in range(10_000):
            study.set_user_attr(f"k{i}", "v" * 2000)
    assert journal.read_bytes().endswith(b"\n"), "the failed write was rolled back"
    filler.unlink()
    study = optuna.load_study(study_name="j", storage=open_storage(str(journal)))
    study.enqueue_trial({"x": 1})
    assert len(_plain_optuna(journal, "j").get_trials()) == 1


# -- invariants of a sweep after any fault ------------------------------------------------------
def check_invariants(sweep_dir: Path, name: str, budget: int) -> None:
    """Optuna and MLflow agree on every trial; nothing RUNNING; the budget exactly met, nothing counted twice."""
    study = _plain_optuna(sweep_dir / "optuna.log", name)
    assert_optuna_reads(study)
    trials = study.get_trials()
    client, _, parents, children = runs_of(sweep_dir, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [c.info.run_id for c in children if c.info.status == "RUNNING"]
    by_run = {c.info.run_id: c for c in children if c.data.tags.get("hpo.orphan") != "true"}
    linked = {t.user_attrs["hpo.mlflow_run_id"]: t for t in trials if t.user_attrs.get("hpo.mlflow_run_id")}
    assert len(linked) == len([t for t in trials if t.user_attrs.get("hpo.mlflow_run_id")]), "one run per trial"
    assert set(by_run) == set(linked), "every child run belongs to exactly one trial, and back"
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}
    counted = []
    for run_id, t in linked.items():
        run = by_run[run_id]
        reason = t.user_attrs.get("hpo.reason")
        want = "KILLED" if reason == "interrupted" else status[t.state]
        assert run.info.status == want, (t.number, t.state, reason, run.info.status)
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        if t.state == TrialState.COMPLETE:
            last = max(client.get_metric_history(run_id, "score"), key=lambda m: m.step)
            assert last.value == pytest.approx(t.value)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or reason not in INFRA_REASONS:
            counted.append(t)
    assert len(counted) == budget, f"{len(counted)} trials counted for a budget of {budget}"
    keys = [json.dumps(t.params, sort_keys=True) for t in counted]
    assert len(set(keys)) == len(keys), "no configuration counted twice"


def _tree(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out += [int(child), *_tree(int(child))]
    return out


def _workers_of(pid: int) -> list[int]:
    """The controller's workers run in sessions of their own: found through /proc."""
    try:
        return _tree(pid)
    except OSError:
        return []


CRASH = """
    name: crash
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      x: {values: [1, 2, 3, 4, 5, 6]}
      epochs: {value: 3}
      sleep: {value: 0.1}
"""


def kill_everything_at_random(tmp_path: Path, rounds: int, seed: int) -> dict:
    """Each round: a fresh sweep, SIGKILL of the controller and every worker at once at a random
    moment (start-up, mid-trial, mid-write), then the same command again to completion."""
    rng = random.Random(seed)
    kills = 0
    for i in range(rounds):
        folder = tmp_path / f"r{i}"
        folder.mkdir()
        sweep = write(folder / "sweep.yaml", CRASH)
        args = ["run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=folder, env={**os.environ, **ENV},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 6.0))
        victims = [proc.pid, *_workers_of(proc.pid)]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
        out = run_hpo(*args, cwd=folder, env=ENV, timeout=300)
        assert out.returncode == 0, out.stderr
        check_invariants(folder / "runs" / "crash", "crash", 6)
    return {"rounds": rounds, "killed_mid_sweep": kills}


def test_everything_killed_at_once_then_resumed_loses_nothing(tmp_path):
    """The fast run: three rounds. The slow test below runs thirty."""
    r = kill_everything_at_random(tmp_path, rounds=3, seed=1)
    assert r["killed_mid_sweep"] >= 1, r


def test_two_controllers_starting_one_new_sweep_at_once_make_one_sweep(tmp_path):
    """Both started in the same instant on a study that does not exist yet: one MLflow store, one experiment,
    one parent run, the budget met once, and both exit 0 (each ran trials of the one study or found none left)."""
    sweep = write(tmp_path / "sweep.yaml", CRASH.replace("name: crash", "name: twin"))
    args = ["run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:slow", "--no-progress"]
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=tmp_path, env={**os.environ, **ENV},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert all("Traceback" not in e for e in errors), errors
    check_invariants(tmp_path / "runs" / "twin", "twin", 6)


@pytest.mark.stress
def test_thirty_random_power_cuts(tmp_path):
    """Thirty rounds (6 min on 2 cores): `make stress`, not `make test`. The windows it found are each pinned by
    a deterministic test (tests/test_store.py: a store cut mid-migration at 10/50/90 %, 4 kills of a real
    build; test_a_controller_killed_right_after_making_its_parent_run_makes_no_second_one), and three random
    rounds run in `make test` (test_everything_killed_at_once_then_resumed_loses_nothing)."""
    r = kill_everything_at_random(tmp_path, rounds=30, seed=7)
    assert r["killed_mid_sweep"] >= 20, r


# -- a disk that fills mid-sweep ------------------------------------------------------------
@pytest.mark.slow
def test_a_disk_that_fills_mid_sweep_stops_with_one_line_and_resumes(small_disk, tmp_path):
    sweep = write(tmp_path / "sweep.yaml", CRASH.replace("name: crash", "name: full")
                  .replace("values: [1, 2, 3, 4, 5, 6]", "values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]")
                  .replace("sleep: {value: 0.1}", "sleep: {value: 0.3}"))
    root = small_disk / "runs"
    args = ["run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow", "--no-progress",
            "--root", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=tmp_path, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a few trials done, then the disk fills
        if (root / "full" / "optuna.log").exists() and sum(
                t.state.is_finished() for t in _plain_optuna(root / "full" / "optuna.log", "full").get_trials()) >= 2:
            break
        time.sleep(0.3)
    filler = fill(small_disk)
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("hpo: sweep", "hpo: warning"))]
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert len(lines) == 1 and "disk full" in lines[0] and "run the same command to resume" in lines[0], err
    filler.unlink()
    again = run_hpo(*args, cwd=tmp_path, env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr
    check_invariants(root / "full", "full", 12)


@pytest.mark.parametrize("error, kind, advice", [
    (OSError(errno.ENOSPC, "No space left on device"), "disk full", "free space"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only", "make it writable again"),
    (__import__("sqlite3").OperationalError("attempt to write a readonly database"), "read-only", "writable"),
    (OSError(errno.EACCES, "Permission denied"), "permission denied", "write access"),
    (__import__("sqlite3").OperationalError("disk I/O error"), "I/O error", "check the disk"),
])
def test_every_refused_write_is_one_line_with_the_way_out(tmp_path, error, kind, advice):
    """ENOSPC, EDQUOT, EROFS, EACCES, EIO (and SQLite's words for them), raised anywhere under a store's own
    exception: one line naming what failed, where, and "run the same command to resume". (A read-only
    remount mid-sweep cannot be staged here: Linux refuses it while the sweep's files are open.)"""
    from hpo import diskspace

    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("the store's own wrapper") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert diskspace.fault(wrapped) == kind
    line = str(diskspace.DiskFull(tmp_path, wrapped))
    assert line.startswith(f"{tmp_path}: ") and kind in line and advice in line
    assert line.endswith("run the same command to resume") and "\n" not in line


def test_a_trainer_reading_a_forbidden_file_fails_its_trial_not_the_sweep():
    """The trainer's own read-only or forbidden files are its trial's failure; only a full disk stops the sweep."""
    from hpo.trial import Reporter, State, run_trainer

    def trainer(config, report):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/train.csv")

    outcome = run_trainer(trainer, {}, Reporter("score", sink=lambda step, metrics: None))
    assert outcome.state == State.FAILED and outcome.error_type == "PermissionError"


# -- stores that misbehave --------------------------------------------------------------------
@pytest.mark.slow
def test_the_mlflow_store_locked_for_a_while_mid_sweep_loses_nothing(tmp_path):
    """Another process holds a write transaction on mlflow.db for 8 s (past SQLite's 5-s busy timeout, so MLflow's
    writes fail and hpo's retry is what carries them): writers wait, then carry on."""
    import sqlite3

    sweep = write(tmp_path / "sweep.yaml", CRASH.replace("name: crash", "name: locked")
                  .replace("sleep: {value: 0.1}", "sleep: {value: 0.4}"))
    args = ["run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=tmp_path, env={**os.environ, **ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "runs" / "locked" / "mlflow.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _runs_in(db) < 3:  # mid-sweep: the parent and two trials' runs
        time.sleep(0.3)  # (workers start, and log, before the parent run exists: logs say nothing here)
    holder = sqlite3.connect(db, timeout=60, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(8)
    holder.execute("COMMIT")
    holder.close()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    check_invariants(tmp_path / "runs" / "locked", "locked", 6)


def _runs_in(db: Path) -> int:
    """How many runs a SQLite tracking store holds (0 while it is not there or not made yet)."""
    import sqlite3

    if not db.exists():  # connecting would make an empty file under MLflow's feet
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_an_mlflow_server_that_answers_500_is_one_line(tmp_path, tiny_sweep):
    """A tracking server that is up but broken: one line naming it, exit 1, no traceback."""
    import http.server
    import threading

    class Broken(http.server.BaseHTTPRequestHandler):
        def _fail(self):
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")

        do_GET = do_POST = do_PATCH = do_DELETE = _fail

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = run_hpo("run", str(tiny_sweep), "--workers", "1", "--tracking-uri", url, "--no-progress", cwd=tmp_path,
                      env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"})
    finally:
        server.shutdown()
    errors = [line for line in out.stderr.splitlines() if not line.startswith("hpo: sweep")]
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert len(errors) == 1 and errors[0].startswith(f"hpo: --tracking-uri: cannot use {url}"), out.stderr


def test_a_tracking_store_killed_while_mlflow_made_its_tables_is_made_again(tmp_path, tiny_sweep):
    """MLflow's schema migration is not crash-safe: a kill leaves `_alembic_tmp_*` tables that fail every
    later open. Found by the thirty power cuts above (a kill in the first second of a sweep)."""
    import sqlite3

    db = tmp_path / "runs" / "tiny" / "mlflow.db"
    db.parent.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                    f"MlflowClient(tracking_uri='sqlite:///{db}').search_experiments()"], check=True)
    with sqlite3.connect(db) as con:  # the schema, no run yet, and a migration that never finished
        con.execute("create table _alembic_tmp_endpoints (x integer)")
        con.execute("delete from alembic_version")
    out = run_hpo("run", str(tiny_sweep), "--workers", "1", "--trials", "1", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _, _, parents, children = runs_of(db.parent, "tiny")
    assert [p.info.status for p in parents] == ["FINISHED"] and [c.info.status for c in children] == ["FINISHED"]


def test_a_resume_tags_child_runs_that_no_trial_names(tmp_path):
    """A stop between creating a trial's child run and recording it in the trial leaves a run no trial names,
    FINISHED or RUNNING: the resume closes it and tags it `hpo.orphan`, and every other child keeps its trial."""
    sweep = write(tmp_path / "sweep.yaml", CRASH.replace("name: crash", "name: orphans")
                  .replace("sleep: {value: 0.1}", "sleep: {value: 0.0}"))
    args = ["run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:slow", "--no-progress"]
    run_hpo(*args, cwd=tmp_path, env=ENV, check=True)
    sweep_dir = tmp_path / "runs" / "orphans"
    client, experiment, parents, _ = runs_of(sweep_dir, "orphans")
    experiment_id = experiment.experiment_id
    parent = parents[0].info.run_id
    done = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "hpo.trial": "99"})
    client.set_terminated(done.info.run_id, "FINISHED")
    stuck = client.create_run(experiment_id, start_time=int(time.time() * 1000) - 3_600_000,
                              tags={"mlflow.parentRunId": parent, "hpo.trial": "98"})
    again = run_hpo(*args, cwd=tmp_path, env=ENV)
    assert again.returncode == 0, again.stderr
    for run_id, status in ((done.info.run_id, "FINISHED"), (stuck.info.run_id, "FAILED")):
        run = client.get_run(run_id)
        assert run.data.tags.get("hpo.orphan") == "true" and run.info.status == status, (run_id, run.info)
    check_invariants(sweep_dir, "orphans", 6)
    _, _, _, children = runs_of(sweep_dir, "orphans")
    assert sum(c.data.tags.get("hpo.orphan") == "true" for c in children) == 2, "no trial's own run was tagged"


def test_a_controller_killed_right_after_making_its_parent_run_makes_no_second_one(tmp_path, tiny_sweep):
    """The window the thirty power cuts found: the parent run exists in MLflow, the study does not name it
    yet. The resumed sweep must reopen that parent (found by the study's `hpo.study_uid`), not add one."""
    kill_after_parent = (
        "import os, signal, sys\n"
        "import hpo.tracking as t\n"
        "made = t.Tracker.start_parent\n"
        "def start_parent(*a, **k):\n"
        "    made(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "t.Tracker.start_parent = start_parent\n"
        "from hpo.cli import entry\n"
        "sys.argv = ['hpo', *sys.argv[1:]]\n"
        "entry()\n")
    args = ["run", str(tiny_sweep), "--workers", "1", "--trials", "2", "--no-progress"]
    killed = subprocess.run([sys.executable, "-c", kill_after_parent, *args], cwd=tmp_path, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    _, _, parents, _ = runs_of(tmp_path / "runs" / "tiny", "tiny")
    assert [p.info.status for p in parents] == ["RUNNING"], "killed with its parent made"
    out = run_hpo(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    _, _, after, children = runs_of(tmp_path / "runs" / "tiny", "tiny")
    assert [p.info.run_id for p in after] == [parents[0].info.run_id]
    assert after[0].info.status == "FINISHED" and after[0].data.params["method"]
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
