"""Faults on the Optuna backend: bad trials, dead workers, Ctrl-C. Real workers, real stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import load_study, run_hpo, runs_of, write

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ENV = {"PYTHONPATH": str(TESTS)}


def _sweep(tmp_path: Path, name: str, params: str, metric: str = "score") -> Path:
    return write(tmp_path / f"{name}.yaml", f"""
        name: {name}
        method: grid
        metric: {{name: {metric}, goal: maximize}}
        parameters:
        {params}
    """)


def test_trainer_faults_end_the_trial_not_the_sweep(tmp_path):
    sweep = _sweep(tmp_path, "faults", "  mode: {values: [ok, error, nan, oom, ok2, exit0, exit1, hostmem, usage]}")
    out = run_hpo("run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:faulty", "--no-progress",
                  cwd=tmp_path, env=ENV, check=True)
    assert json.loads(out.stdout.splitlines()[-1])["failed"] == 6
    sweep_dir = tmp_path / "runs" / "faults"
    trials = {t.params["mode"]: t for t in load_study(sweep_dir, "faults").get_trials()}
    assert trials["ok"].state == TrialState.COMPLETE and trials["ok2"].state == TrialState.COMPLETE
    assert trials["error"].state == TrialState.FAIL
    assert trials["error"].user_attrs["hpo.error_type"] == "ValueError"
    assert "boom" in trials["error"].user_attrs["hpo.error"]
    assert trials["nan"].state == TrialState.FAIL and trials["nan"].user_attrs["hpo.reason"] == "nan"
    assert 2 not in trials["nan"].intermediate_values, "training stops at the NaN"
    assert trials["oom"].state == TrialState.FAIL and trials["oom"].user_attrs["hpo.reason"] == "oom"
    assert trials["exit0"].state == TrialState.COMPLETE and trials["exit0"].value == 0.25, "sys.exit(0) ends a script"
    assert trials["exit1"].state == TrialState.FAIL and trials["exit1"].user_attrs["hpo.reason"] == "exit"
    assert "sys.exit(1)" in trials["exit1"].user_attrs["hpo.error"]
    assert trials["hostmem"].user_attrs["hpo.reason"] == "oom" and trials["hostmem"].user_attrs["hpo.error"]
    from hpo.summary import failures

    assert trials["usage"].user_attrs["hpo.error"].endswith("invalid int value: 'x'")
    said = failures(list(trials.values()))
    assert any("error: argument --sleep: invalid int value" in what for what in said), ("the end is kept", said)
    # One worker served every trial: the OOM and the sys.exit calls did not take it down.
    assert len({t.user_attrs["hpo.pid"] for t in trials.values()}) == 1
    _, _, _, children = runs_of(sweep_dir, "faults")
    by_mode = {c.data.params["mode"]: c for c in children}
    assert by_mode["error"].info.status == "FAILED"
    assert by_mode["error"].data.tags["hpo.error_type"] == "ValueError"
    assert by_mode["oom"].data.tags["hpo.reason"] == "oom"
    assert by_mode["nan"].data.tags["hpo.reason"] == "nan"
    assert by_mode["ok"].info.status == "FINISHED"


def _wait_for(predicate, timeout: float = 60.0, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _running(sweep_dir: Path, name: str):
    try:
        study = load_study(sweep_dir, name)
    except Exception:  # noqa: BLE001 - not created yet
        return []
    return [t for t in study.get_trials() if t.state == TrialState.RUNNING and "hpo.pid" in t.user_attrs
            and "hpo.mlflow_run_id" in t.user_attrs]


def _held(tmp_path: Path, sweep_dir: Path, name: str):
    """(pid, trial) of a worker held mid-trial by `fault_trainers:held` (it wrote `hold.<pid>` and waits while
    `hold` exists): a signal sent to it lands mid-trial however slow the machine."""
    pid = int(_wait_for(lambda: sorted(tmp_path.glob("hold.*")), timeout=120)[0].suffix[1:])
    trial = _wait_for(lambda: [t for t in _running(sweep_dir, name) if t.user_attrs["hpo.pid"] == pid])[0]
    return pid, trial


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "hpo", "run", *args, "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_worker_fails_its_trial_and_is_replaced(tmp_path):
    hold = tmp_path / "hold"
    hold.touch()
    sweep = _sweep(tmp_path, "kill", "  x: {values: [1, 2, 3, 4, 5, 6]}\n          epochs: {value: 3}\n"
                                     f"          sleep: {{value: 0.2}}\n          hold: {{value: {hold}}}")
    proc = _start(tmp_path, str(sweep), "--workers", "2", "--trainer", "fault_trainers:held")
    sweep_dir = tmp_path / "runs" / "kill"
    pid, victim = _held(tmp_path, sweep_dir, "kill")
    os.kill(pid, signal.SIGKILL)
    hold.unlink()
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    trials = load_study(sweep_dir, "kill").get_trials()
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["hpo.reason"] == "worker died" and "SIGKILL" in dead.user_attrs["hpo.error"]
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in finished) == [1, 2, 3, 4, 5, 6], "the killed grid point is re-run"
    pids = {t.user_attrs["hpo.pid"] for t in trials if t.user_attrs.get("hpo.worker") == dead.user_attrs["hpo.worker"]}
    assert len(pids) >= 2, "the slot got a new worker"
    _, _, _, children = runs_of(sweep_dir, "kill")
    child = next(c for c in children if c.info.run_id == dead.user_attrs["hpo.mlflow_run_id"])
    assert child.info.status == "FAILED" and child.data.tags["hpo.reason"] == "worker died"
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("workers", [2, 1])
def test_a_hung_worker_is_killed_its_trial_failed_and_the_sweep_ends(tmp_path, workers):
    """SIGSTOP (a stuck DataLoader, an NFS stall) on the default journal storage: the worker stops renewing
    its lease, so after the grace its trial is FAILED `worker hung` (re-run, not counted), the stopped
    process is killed and replaced, and the sweep meets its budget and exits 0. With one worker too."""
    from test_crash import check_invariants

    hold = tmp_path / "hold"
    hold.touch()
    sweep = _sweep(tmp_path, "hung", "  x: {values: [1, 2, 3, 4]}\n          epochs: {value: 3}\n"
                                     f"          sleep: {{value: 0.2}}\n          hold: {{value: {hold}}}")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1", "HPO_HEARTBEAT_GRACE_S": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(sweep), "--workers", str(workers), "--trainer",
                             "fault_trainers:held", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "runs" / "hung"
    pid, victim = _held(tmp_path, sweep_dir, "hung")
    os.kill(pid, signal.SIGSTOP)
    hold.unlink()
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err
    trials = load_study(sweep_dir, "hung").get_trials()
    hung = next(t for t in trials if t.number == victim.number)
    assert hung.state == TrialState.FAIL and hung.user_attrs["hpo.reason"] == "worker hung", hung.user_attrs
    assert "no lease renewal" in hung.user_attrs["hpo.error"]
    assert not Path(f"/proc/{pid}").exists(), "the stopped worker was killed"
    check_invariants(sweep_dir, "hung", 4)


def test_a_worker_woken_after_its_lease_ran_out_writes_nothing(tmp_path):
    """The fence: a process that survived being judged dead (stopped past the grace, e.g. on a machine the
    controller cannot kill on) must not write when it wakes: its first write ends it instead."""
    marks = tmp_path / "writes.txt"
    script = (
        "import os, sys, time\n"
        "from hpo import liveness\n"
        "liveness.start_from_env()\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    while True:\n"
        "        liveness.guard()\n"
        "        f.write(f'{time.time()}\\n'); f.flush()\n"
        "        time.sleep(0.05)\n")
    env = {**os.environ, "HPO_ALIVE_FILE": str(tmp_path / "w.alive"), "HPO_HEARTBEAT_GRACE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(marks)], env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: marks.exists() and marks.read_text().count("\n") > 5)
    os.kill(proc.pid, signal.SIGSTOP)
    stopped = time.time()
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=30)
    from hpo.liveness import EXIT_FENCED

    assert proc.returncode == EXIT_FENCED, err
    assert "writes nothing more" in err
    last = float(marks.read_text().split()[-1])
    assert last < stopped + 0.5, "nothing was written after the wake-up"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _below(pid: int) -> list[int]:
    from hpo.worker_pool import descendants

    return descendants(pid)


def test_ctrl_z_pauses_the_workers_with_the_controller_and_fg_resumes_them(tmp_path):
    """SIGTSTP (Ctrl-Z) stops the controller and every worker (they run in sessions of their own, so the
    terminal's signal would reach only the controller); nothing trains while paused. SIGCONT (`fg`) resumes
    them all, and a pause longer than the lease grace is not taken for a hang: no trial fails."""
    from test_crash import check_invariants

    sweep = _sweep(tmp_path, "pause", "  x: {values: [1, 2, 3, 4]}\n          epochs: {value: 6}\n          sleep: {value: 0.5}")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1", "HPO_HEARTBEAT_GRACE_S": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(sweep), "--workers", "2", "--trainer",
                             "fault_trainers:slow", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "runs" / "pause"
    try:
        _wait_for(lambda: [t for t in _running(sweep_dir, "pause") if t.intermediate_values], timeout=120)
        workers = _below(proc.pid)
        os.kill(proc.pid, signal.SIGTSTP)
        _wait_for(lambda: _proc_state(proc.pid) == "T" and all(_proc_state(w) in ("T", "gone") for w in workers))
        steps = sum(len(t.intermediate_values) for t in load_study(sweep_dir, "pause").get_trials())
        time.sleep(5)  # well past the 2-s grace
        assert sum(len(t.intermediate_values) for t in load_study(sweep_dir, "pause").get_trials()) == steps, \
            "nothing trained while paused"
        assert all(_proc_state(w) == "T" for w in workers)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert proc.returncode == 0, err
    trials = load_study(sweep_dir, "pause").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4, [t.user_attrs.get("hpo.error") for t in trials]
    check_invariants(sweep_dir, "pause", 4)


def test_a_closed_output_pipe_interrupts_the_sweep_and_the_same_command_resumes(tmp_path):
    """`hpo run ... 2>&1 | head -n 2`: once the reader is gone, the sweep stops as Ctrl-C stops it (running
    trials and the parent KILLED, exit 130), not as a failure; the same command resumes it."""
    from test_crash import check_invariants

    sweep = _sweep(tmp_path, "piped", "  x: {values: [1, 2, 3, 4, 5, 6]}\n          epochs: {value: 3}\n          sleep: {value: 0.4}")
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    args = [sys.executable, "-m", "hpo", "run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow"]
    read, write_end = os.pipe()
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=write_end, stderr=write_end)  # a line per trial
    os.close(write_end)
    with os.fdopen(read, "rb") as reader:  # `head -n 2`: two lines, then the reader goes away
        reader.readline(), reader.readline()
    assert proc.wait(timeout=180) == 130
    _, _, parents, _ = runs_of(tmp_path / "runs" / "piped", "piped")
    assert [p.info.status for p in parents] == ["KILLED"]
    resumed = run_hpo("run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow", "--no-progress",
                      cwd=tmp_path, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    check_invariants(tmp_path / "runs" / "piped", "piped", 6)


def test_retries_requeue_failed_params(tmp_path):
    sweep = _sweep(tmp_path, "retry", "  mode: {values: [ok, error]}")
    out = run_hpo("run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:faulty", "--retries", "2",
                  "--no-progress", cwd=tmp_path, env=ENV, check=True)
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["complete"] == 1 and summary["failed"] == 1
    sweep_dir = tmp_path / "runs" / "retry"
    trials = load_study(sweep_dir, "retry").get_trials()
    errors = sorted((t for t in trials if t.params["mode"] == "error"), key=lambda t: t.number)
    assert len(errors) == 3, "the original and two retries"
    assert [t.user_attrs.get("hpo.retry_of") for t in errors] == [None, errors[0].number, errors[1].number]
    assert [t.user_attrs.get("hpo.attempt", 0) for t in errors] == [0, 1, 2]
    _, _, _, children = runs_of(sweep_dir, "retry")
    tagged = sorted(c.data.tags["hpo.retry_of"] for c in children if "hpo.retry_of" in c.data.tags)
    assert tagged == sorted(str(t.number) for t in errors[:2])


@pytest.mark.timeout(120)  # a lock that blocked would hang here: the timeout fails the test
def test_a_writer_killed_inside_the_journal_lock_blocks_nobody(tmp_path):
    """Optuna's own journal locks outlive a SIGKILLed holder; hpo's flock does not."""
    journal = tmp_path / "optuna.log"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from hpo.journal import FlockLock; "
        "lock = FlockLock(%r); lock.acquire(); print('held', flush=True); time.sleep(600)")
        % (str(TESTS.parent), str(journal) + ".flock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    import optuna

    from hpo.storage import open_storage

    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    study.enqueue_trial({})
    assert len(study.get_trials()) == 1


def test_controller_killed_with_sigkill_loses_nothing(tmp_path):
    sweep = _sweep(tmp_path, "ctl", "  x: {values: [1, 2, 3, 4]}\n          epochs: {value: 4}\n          sleep: {value: 0.5}")
    args = (str(sweep), "--workers", "2", "--trainer", "fault_trainers:slow")
    proc = _start(tmp_path, *args)
    sweep_dir = tmp_path / "runs" / "ctl"
    _wait_for(lambda: len(_running(sweep_dir, "ctl")) == 2)
    pids = [t.user_attrs["hpo.pid"] for t in _running(sweep_dir, "ctl")]
    proc.kill()
    proc.communicate(timeout=30)

    def workers_gone():
        try:
            for pid in pids:
                os.kill(pid, 0)
        except ProcessLookupError:
            return all(not Path(f"/proc/{p}").exists() for p in pids)
        return False

    _wait_for(workers_gone, timeout=20)
    trials = load_study(sweep_dir, "ctl").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    _, _, parents, children = runs_of(sweep_dir, "ctl")
    assert not [r for r in parents + children if r.info.status == "RUNNING"], "workers closed their runs and the parent"
    assert parents[0].data.tags["hpo.state"] == "controller died"

    run_hpo("run", *args, "--no-progress", cwd=tmp_path, env=ENV, check=True)
    done = [t for t in load_study(sweep_dir, "ctl").get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in done) == [1, 2, 3, 4]
