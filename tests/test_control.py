"""`hpo pause | resume | stop` (as `wandb sweep --pause/--resume/--stop`): a real sweep, real workers, the commands
run as a user runs them from another shell; what they do is read back from Optuna's and MLflow's own clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_study, run_hpo, runs_of, write

TESTS = Path(__file__).parent
SWEEP = """
name: ctl
method: random
metric: {name: score, goal: maximize}
parameters:
  x: {distribution: uniform, min: 0.0, max: 1.0}
  epochs: {value: 4}
  sleep: {value: 0.3}
"""


def _states(sweep_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in load_study(sweep_dir, "ctl").get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _until(what, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"no {what} in {timeout} s")


@pytest.mark.slow
def test_pause_holds_new_trials_resume_goes_on_and_stop_ends_it_resumably(tmp_path):
    hold = tmp_path / "hold"  # while it exists, a trial waits after its first epoch (fault_trainers:held)
    write(tmp_path / "sweep.yaml", SWEEP + f"  hold: {{value: {hold}}}\n")
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [sys.executable, "-m", "hpo", "run", "sweep.yaml", "--trials", "10", "--workers", "2", "--no-report",
            "--no-progress", "--trainer", "fault_trainers:held"]
    sweep_dir = tmp_path / "runs" / "ctl"
    hold.touch()  # the first two trials wait mid-run until the pause is in: it lands with trials still queued
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until("two held trials", lambda: len(list(tmp_path.glob("hold.*"))) == 2)
        paused = run_hpo("pause", "sweep.yaml", cwd=tmp_path, check=True)
        assert paused.stdout.startswith("ctl: paused"), paused.stdout
        hold.unlink()
        for held_mark in tmp_path.glob("hold.*"):
            held_mark.unlink()
        # the running trials finish; then nothing runs, and nothing finishes, while it stays paused
        held = _until("paused sweep to settle", lambda: not _states(sweep_dir).get("RUNNING") and _states(sweep_dir))
        time.sleep(3)
        assert _states(sweep_dir) == held and held.get("WAITING"), (held, _states(sweep_dir))
        assert proc.poll() is None, "a paused sweep stays up"

        run_hpo("resume", "sweep.yaml", cwd=tmp_path, check=True)
        _until("a trial after the resume", lambda: _states(sweep_dir).get("COMPLETE", 0) > held.get("COMPLETE", 0))
        hold.touch()  # a trial that reports from now on waits after its first epoch, and says so in a file:
        _until("a held trial", lambda: list(tmp_path.glob("hold.*")))  # the stop reaches it however slow the machine
        run_hpo("stop", "sweep.yaml", cwd=tmp_path, check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped (hpo stop)" in err and "run the same command to resume" in err, err
    trials = load_study(sweep_dir, "ctl").get_trials()
    assert not [t.number for t in trials if t.state.name == "RUNNING"]
    interrupted = [t for t in trials if t.user_attrs.get("hpo.reason") == "interrupted"]
    assert interrupted, [(t.number, t.state.name) for t in trials]
    _, _, parents, children = runs_of(sweep_dir, "ctl")
    assert [p.info.status for p in parents] == ["KILLED"] and not [c for c in children if c.info.status == "RUNNING"]

    hold.unlink()
    again = run_hpo(*argv[3:], cwd=tmp_path, env={"PYTHONPATH": str(TESTS)}, check=True)
    assert "was stopped (hpo stop); running it again" in again.stderr, again.stderr
    trials = load_study(sweep_dir, "ctl").get_trials()
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 10  # the budget, met after the stop
    _, _, parents, _ = runs_of(sweep_dir, "ctl")
    assert [p.info.status for p in parents] == ["FINISHED"]


def test_pause_is_refused_where_the_engine_cannot_hold_its_trials(tmp_path):
    write(tmp_path / "sweep.yaml", SWEEP.replace("epochs: {value: 4}", "epochs: {value: 1}"))
    run_hpo("run", "sweep.yaml", "--backend", "wandb", "--offline", "--trials", "1", "--workers", "1", "--no-report",
            "--trainer", "contract_trainers:curve", cwd=tmp_path, check=True,
            env={"PYTHONPATH": str(TESTS), "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    out = run_hpo("pause", "sweep.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "pause: the wandb engine cannot hold its trials; `hpo stop`, then the same `hpo run` resumes it"]
