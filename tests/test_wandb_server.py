"""The W&B *server* path (`hpo run --backend wandb --project P`) end to end, against a stand-in server.

The W&B cloud cannot be reached from here. tests/wandb_standin/server.py stands in
for it on 127.0.0.1 (WANDB_BASE_URL): the wandb SDK in hpo's processes is not mocked
and makes the same requests it makes to api.wandb.ai. `wandb.sweep` (in hpo's child
process) registers the sweep with UpsertSweep; each of hpo's agents runs the real
`wandb.agent` (wandb's in-process pyagent), which registers with CreateAgent and
heartbeats; every run is a real *online* wandb run whose `wandb.init()` picks up the
config the agent wrote (WANDB_SWEEP_PARAM_PATH), upserts itself into the sweep, and
streams its history through file_stream. The stand-in proposes each run with
`sweeps.next_run` (the engine of W&B's hosted controller), holds run_cap, runs
`sweeps.stop_runs` (hyperband) over the histories the runs streamed, sends "stop"
to a run's agent at its next heartbeat, and "exit" to idle agents once the sweep
has nothing more to give. The tests read what the stand-in saw, and what hpo
recorded with Optuna's and MLflow's own clients. `hpo agent` joining a sweep made
elsewhere runs against it too.

hpo behaviour these tests pin down (a choice, not the server's): a stop reaches the
trainer at its next report (PRUNED, as an offline stop); one that arrives after the
trainer's last report leaves the run COMPLETE. Ctrl-C ends the runs in flight
"interrupted" (not counted). A resumed `hpo run` makes a new W&B sweep whose run_cap
is what is left of the budget (the earlier sweep stays as it was on the server, and
the new sweep's search does not see the earlier sweep's runs).

Limits of the stand-in (what these tests do not show about the real server):
- Its GraphQL is canned: operations are told apart by name and answered with the
  fields the SDK reads; it has no schema, so a query the SDK would send to a newer
  server and that needs another answer shows up only as `unknown` (asserted empty).
- How W&B's server schedules is inferred, not known: a run is proposed only to an
  agent whose heartbeat reports nothing queued or running; run_cap counts every run
  it proposed; early termination runs at each heartbeat over every run of the sweep;
  an idle agent of a sweep with nothing left gets "exit". The real server's timing
  and its handling of runs proposed but never started (an agent stopped in between)
  may differ. `prior_runs` (recorded, not applied), updating, pausing, resuming or
  cancelling a sweep, the UI's stop button (a run's `stopped` status) and launch
  queues are not served.
- One user and entity; the API key is checked (every request carries it) but no
  permissions. Nested `parameters:` blocks are not supported (`sweeps` 0.2.0 drops
  them); the sweeps here are flat.
- Run files are accepted at fake upload URLs and only their names and sizes are
  kept; artifacts, system metrics and console logs are not.
- Timing knobs, so the tests take seconds: pyagent's heartbeat every 0.2 s instead
  of 5 s (tests/wandb_standin/sitecustomize.py: wandb's `HEARTBEAT_SLEEP_SECONDS`,
  which wandb says tests may set) and file_stream every 1 s instead of 15 s
  (WANDB__FILE_STREAM_TRANSMIT_INTERVAL; wandb-core takes no less than 1 s). On the
  real server a stop comes up to ~20 s after the history that earned it.
- One machine, CPU slots standing in for GPU slots (the launch plan's per-GPU
  CUDA_VISIBLE_DEVICES is tested in test_wandb.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import child_pids, load_study, pid_alive, runs_of, write
from contract_trainers import score
from optuna.trial import TrialState

from wandb_standin.server import StandinServer

TESTS = Path(__file__).resolve().parent
FAKE_KEY = "0123456789abcdef" * 2 + "deadbeef"  # 40 characters, as a W&B key
EPOCHS = 8  # the Hyperband grid's runs: enough reports for W&B's rungs at 2 and 4
RANDOM_EPOCHS = 4  # the random sweep's runs (Ctrl-C and resume, `hpo agent`): no rungs to reach
STOPPED = "stopped by the W&B sweep controller"
# Hyperband from W&B (eta 2): a run is stopped once its history passes index 2 or 4 and its best score
# is outside the top half of the scores there of every run that got that far. The grid hands out two
# strong runs first, then weak ones: the weak ones are stopped whichever runs share the agents with them.
GRID = f"""
name: wserver
method: grid
metric: {{name: score, goal: maximize}}
early_terminate: {{type: hyperband, min_iter: 2, eta: 2}}
parameters:
  x: {{values: [1.0, 0.95, 0.2, 0.15, 0.1, 0.05]}}
  epochs: {{value: {EPOCHS}}}
  sleep: {{value: 0.4}}
"""
RANDOM = f"""
name: wresume
method: random
metric: {{name: score, goal: maximize}}
parameters:
  x: {{distribution: uniform, min: 0.0, max: 1.0}}
  epochs: {{value: {RANDOM_EPOCHS}}}
  sleep: {{value: 0.4}}
"""


@pytest.fixture
def standin():
    server = StandinServer(FAKE_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path: Path, standin: StandinServer) -> dict[str, str]:
    """wandb online against the stand-in, its folders in tmp, a fake key that must never be written anywhere."""
    home = tmp_path / "wandb-home"
    home.mkdir()
    return {
        "WANDB_BASE_URL": standin.url, "WANDB_API_KEY": FAKE_KEY, "WANDB_DIR": str(home),
        "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_SILENT": "true",
        "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS / "wandb_standin"), str(TESTS)]),
        "HPO_WANDB_STANDIN_HEARTBEAT": "0.2", "WANDB__FILE_STREAM_TRANSMIT_INTERVAL": "1",
    }


def hpo_argv(sweep: Path, budget: int) -> list[str]:
    # --keep-models 0: a kept model's seconds at a run's end would shift when runs reach their rungs.
    return [sys.executable, "-m", "hpo", "run", str(sweep), "--backend", "wandb", "--project", "proj",
            "--workers", "2", "--trials", str(budget), "--trainer", "contract_trainers:curve",
            "--keep-models", "0", "--no-progress"]


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    full = {**os.environ, **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    full.pop("WANDB_MODE", None)  # offline mode would take hpo's offline path
    return subprocess.Popen(argv, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = start(argv, cwd, env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def scores(run: dict) -> list[float]:
    """A run's `score` at each step, as its file_stream sent it."""
    return [h["score"] for h in run["history"] if "score" in h]


def check_run_is_trial(run: dict, trial, child, epochs: int = EPOCHS) -> None:
    """One run the stand-in proposed, as hpo recorded it: same config, same reports, same end."""
    params = {k: v["value"] for k, v in run["args"].items()}
    assert run["upserted_config"] == run["args"], "wandb.init() took the config the server proposed"
    assert trial.params == params and child.data.params == {k: str(v) for k, v in params.items()}
    assert [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)] == scores(run), \
        "the run's history on the server is what the trial reported"
    assert child.data.tags["hpo.wandb_mode"] == "online" == trial.user_attrs["wandb.mode"]
    if trial.state == TrialState.PRUNED:
        assert run["stop_sent"], "only the server's stop prunes a run"
        assert trial.user_attrs["hpo.reason"] == STOPPED
        assert child.info.status == "FINISHED" and child.data.tags["hpo.state"] == "pruned"
        assert child.data.tags["hpo.reason"] == STOPPED and "hpo.error" not in child.data.tags
        assert run["history_at_stop"] <= len(scores(run)) <= epochs, "it stopped at a report after the stop"
    else:  # (a stop that reached the agent after the trainer's last report does not undo the run)
        assert trial.state == TrialState.COMPLETE and len(scores(run)) == epochs
        assert trial.value == scores(run)[-1], "a trial's value is its last report"
        assert child.info.status == "FINISHED"
    assert run["exitcode"] == 0, "hpo ends a pruned run as a finished one (exit code 0), as offline"
    assert run["complete"] and {"config.yaml", "wandb-summary.json"} <= set(run["files"])


def no_key_anywhere(out: str, err: str, *folders: Path) -> None:
    assert FAKE_KEY not in out + err
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert FAKE_KEY.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_server_sweep_two_agents_hyperband_stops(tmp_path, env, standin):
    sweep = write(tmp_path / "sweep.yaml", GRID)
    budget = 6
    rc, out, err = run(hpo_argv(sweep, budget), tmp_path, env)
    assert rc == 0, err
    seen = standin.snapshot()
    assert not seen["unknown"] and not seen["errors"] and not seen["unauthorized"], seen

    # What was searched: one sweep, the file as written plus run_cap = the budget; two agents on it.
    assert len(seen["sweeps"]) == 1
    (sw,) = seen["sweeps"].values()
    assert sw["config"] == {**yaml.safe_load(sweep.read_text()), "run_cap": budget}
    assert f"hpo: W&B sweep standin-entity/proj/{sw['id']}: {standin.url.replace('://api.', '://')}" in err
    assert len(sw["runs"]) == budget and sw["state"] == "FINISHED"
    agents = list(seen["agents"].values())
    assert len(agents) == 2 and {a["sweep"] for a in agents} == {sw["id"]}
    for a in agents:  # each ran runs, was told "exit" once the sweep had nothing left, and got nothing after
        kinds = [c["type"] for c in a["commands"]]
        assert "run" in kinds and kinds[-1] == "exit" and kinds.count("exit") == 1
    runs = {rid: seen["runs"][rid] for rid in sw["runs"]}
    assert sorted(r["args"]["x"]["value"] for r in runs.values()) == sorted(
        yaml.safe_load(GRID)["parameters"]["x"]["values"]), "the grid, each point once across both agents"

    # What was recorded: each proposed run is one trial and one MLflow child, ended as the server ended it.
    sweep_dir = tmp_path / "runs" / "wserver"
    trials = load_study(sweep_dir, "wserver").get_trials()
    _, _, parents, children = runs_of(sweep_dir, "wserver")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trials) == budget == len(children)
    by_run = {t.user_attrs["wandb.run_id"]: t for t in trials}
    assert set(by_run) == set(runs)
    mlflow = {c.info.run_id: c for c in children}
    for rid, r in runs.items():
        check_run_is_trial(r, by_run[rid], mlflow[by_run[rid].user_attrs["hpo.mlflow_run_id"]])
    stopped = [r for r in runs.values() if r["stop_sent"]]
    pruned = [by_run[r["id"]] for r in stopped if by_run[r["id"]].state == TrialState.PRUNED]
    assert pruned and len(stopped) < budget, "hyperband stopped some runs, not all"
    assert any(len(t.intermediate_values) < EPOCHS for t in pruned), "a stop cut a run short"
    # The two strongest come first and run side by side: neither is outside the top half of the two.
    assert all(r["args"]["x"]["value"] < 0.95 for r in stopped), "the two strongest runs were never stopped"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert not [c for c in children if c.info.status == "RUNNING"]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["pruned"] == len(pruned) and summary["complete"] == budget - len(pruned)

    # One agent per slot: each agent's runs ran on one slot, the two agents on the two slots.
    slots = [{by_run[c["run_id"]].user_attrs["hpo.worker"] for c in a["commands"] if c["type"] == "run"}
             for a in agents]
    assert sorted(s.pop() for s in slots if len(s) == 1) == ["cpu0", "cpu1"]
    # The key went to the server in every request (nothing unauthorized) and was written nowhere.
    no_key_anywhere(out, err, tmp_path / "runs", Path(env["WANDB_DIR"]))

    # `hpo agent ENTITY/PROJECT/SWEEP_ID` joins a sweep made elsewhere (W&B's UI, `wandb sweep`): one agent,
    # one run (--count 1), logged to W&B only (no hpo controller there: no MLflow child, no Optuna trial).
    other = standin.create_sweep(yaml.safe_load(RANDOM), "proj")
    proc = start([sys.executable, "-m", "hpo", "agent", f"standin-entity/proj/{other}", "--workers", "1",
                  "--count", "1", "--trainer", "contract_trainers:curve"], tmp_path, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    seen = standin.snapshot()
    assert [a["sweep"] for a in seen["agents"].values()].count(other) == 1
    (rid,) = seen["sweeps"][other]["runs"]
    r = seen["runs"][rid]
    assert r["upserted_config"] == r["args"] and r["complete"] and r["exitcode"] == 0
    assert scores(r) == [score(r["args"]["x"]["value"], step, RANDOM_EPOCHS) for step in range(1, RANDOM_EPOCHS + 1)]
    assert not seen["unknown"] and not seen["errors"] and not seen["unauthorized"]
    no_key_anywhere(out, err, tmp_path / "runs")


def _wait(standin: StandinServer, ready, what: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = standin.snapshot()
        if ready(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no {what} in {timeout} s: {standin.snapshot()['events'][-20:]}")


@pytest.mark.slow
def test_server_sweep_ctrl_c_then_resume(tmp_path, env, standin):
    """Ctrl-C mid-sweep: exit 130, the runs in flight end 'interrupted' (not counted), nothing RUNNING, the parent
    KILLED. The same command again: a new W&B sweep for what is left of the budget, under the same MLflow parent."""
    hold = tmp_path / "hold"  # the third and fourth runs wait after their first report (contract_trainers.curve)
    hold.touch()
    sweep = write(tmp_path / "sweep.yaml", RANDOM + f"  hold: {{value: {hold}}}\n  hold_from: {{value: 2}}\n")
    budget = 4
    proc = start(hpo_argv(sweep, budget), tmp_path, env)

    def in_flight(seen: dict) -> list[dict]:  # runs whose trainer has reported (so hpo has begun their trial)
        return [r for r in seen["runs"].values() if r["history"] and not r["complete"]]

    try:
        _wait(standin, lambda s: sum(r["complete"] for r in s["runs"].values()) >= 2 and len(in_flight(s)) == 2
              and len(list(tmp_path.glob("hold.[0-9]*"))) == 2, "two runs done and two held in flight")
        agents = child_pids(proc.pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        hold.unlink()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert json.loads(out.strip().splitlines()[-1])["interrupted"] is True
    assert "Traceback" not in err
    assert len(agents) == 2 and not [pid for pid in agents if pid_alive(pid)], "every agent stopped"

    sweep_dir = tmp_path / "runs" / "wresume"
    seen = standin.snapshot()
    (first,) = seen["sweeps"].values()
    assert first["run_cap"] == budget
    trials = load_study(sweep_dir, "wresume").get_trials()
    by_run = {t.user_attrs["wandb.run_id"]: t for t in trials}
    assert set(by_run) <= set(first["runs"])
    assert {r["id"] for r in seen["runs"].values() if r["history"]} <= set(by_run), "a run that reported is a trial"
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) >= 1 and {t.user_attrs["hpo.reason"] for t in interrupted} == {"interrupted"}
    for t in interrupted:  # the wandb run ended as a crash (hpo's exit code for an interrupted run)
        assert seen["runs"][t.user_attrs["wandb.run_id"]]["exitcode"] == 255
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) >= 2
    _, _, parents, children = runs_of(sweep_dir, "wresume")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    parent_id = parents[0].info.run_id
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert {c.data.tags["hpo.reason"] for c in children if c.info.status == "KILLED"} == {"interrupted"}

    # Resume: the same command finishes the budget, on a new W&B sweep whose run_cap is what is left.
    rc, out2, err2 = run(hpo_argv(sweep, budget), tmp_path, env)
    assert rc == 0, err2
    left = budget - len(counted)
    seen = standin.snapshot()
    assert not seen["unknown"] and not seen["errors"] and not seen["unauthorized"], seen
    assert len(seen["sweeps"]) == 2, "a resumed sweep is a new W&B sweep"
    second = next(s for s in seen["sweeps"].values() if s["id"] != first["id"])
    assert second["config"] == {**yaml.safe_load(sweep.read_text()), "run_cap": left}, "for what is left only"
    assert len(second["runs"]) == left and second["state"] == "FINISHED"
    assert sorted(a["sweep"] for a in seen["agents"].values()) == sorted([first["id"]] * 2 + [second["id"]] * 2)

    trials = load_study(sweep_dir, "wresume").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == budget
    assert f"hpo: resuming: a new W&B sweep for the {left} of {budget} runs left" in err2
    by_run = {t.user_attrs["wandb.run_id"]: t for t in trials}
    _, _, parents, children = runs_of(sweep_dir, "wresume")
    assert [p.info.run_id for p in parents] == [parent_id] and parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    mlflow = {c.info.run_id: c for c in children}
    new = [t for t in trials if t.user_attrs["wandb.run_id"] in second["runs"]]
    assert len(new) == left and min(t.number for t in new) > max(t.number for t in counted + interrupted)
    for rid in second["runs"]:
        check_run_is_trial(seen["runs"][rid], by_run[rid], mlflow[by_run[rid].user_attrs["hpo.mlflow_run_id"]],
                           RANDOM_EPOCHS)
    no_key_anywhere(out + out2, err + err2, tmp_path / "runs", Path(env["WANDB_DIR"]))
