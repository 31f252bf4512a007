"""W&B Sweeps backend: W&B's engine offline with real agents, wandb offline runs, MLflow and the mirror.

The W&B cloud cannot be reached from here: the online path is tested up to the
launch plan and the error a user gets when the server is unreachable.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import load_study, run_hpo, runs_of, write
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parent.parent
FAKE_KEY = "0123456789abcdef" * 2 + "deadbeef"  # 40 chars, the shape of a W&B key
OFFLINE = """
name: wtiny
method: random
metric: {name: val_acc, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 3}
parameters:
  epochs: {value: 6}
  hidden: {values: [16, 32]}
  lr: {distribution: log_uniform_values, min: 1.0e-5, max: 5.0e-2}
  optimizer: {values: [sgd, adam]}
  batch_size: {value: 128}
command: [python, -m, hpo.train, "${args}"]
"""
GRID = """
name: wgrid
method: grid
command: [python, -m, hpo.train, "${args}"]
metric: {name: val_acc, goal: maximize}
parameters:
  epochs: {value: 1}
  hidden: {values: [8, 16, 32]}
  lr: {values: [0.01, 0.001]}
  batch_size: {value: 256}
"""


@pytest.fixture
def wandb_env(tmp_path: Path) -> dict[str, str]:
    """wandb offline, its folders in tmp, and a (fake) key that must never be written anywhere."""
    home = tmp_path / "wandb-home"
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(home), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_SILENT": "true", "WANDB_API_KEY": FAKE_KEY,
            "HOME": str(tmp_path)}


# -- reading a wandb offline run (wandb 0.31 has no Python reader for .wandb files) -----------
def _records(path: Path):
    """The protobuf records of a .wandb file: a header, then LevelDB-log framing in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or kind == 0:  # block trailer / zero padding
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def read_offline_run(folder: Path) -> dict:
    out: dict = {"config": {}, "history": [], "exit": None}
    for rec in _records(next(folder.glob("run-*.wandb"))):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(id=rec.run.run_id, group=rec.run.run_group, project=rec.run.project)
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == "exit":
            out["exit"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    return out


# -- the default sweep.yaml ---------------------------------------------------------------------
def test_default_sweep_yaml_is_a_valid_wandb_sweep():
    import jsonschema

    from hpo.backends.wandb.engine import _sweeps
    from hpo.spec.schema import wandb_schema

    raw = yaml.safe_load((REPO / "sweep.yaml").read_text())
    jsonschema.Draft7Validator(wandb_schema()).validate(raw)  # W&B's schema (+ run_cap, which its server takes)
    _sweeps().SweepConfig({k: v for k, v in raw.items() if k != "run_cap"})  # the engine's own validation
    assert raw["command"][-3:] == ["-m", "hpo.train", "${args}"]
    from hpo.train import parse_args

    assert parse_args(["--lr=0.01", "--hidden=64", "--optimizer=adam"]) == {"lr": 0.01, "hidden": 64,
                                                                             "optimizer": "adam"}


# -- the engine decides -------------------------------------------------------------------------
def test_engine_hands_out_what_sweeps_next_run_proposes(tmp_path):
    from hpo import spec as specmod
    from hpo.backends.wandb.engine import Engine, _sweeps

    sweeps = _sweeps()
    spec = specmod.load(write(tmp_path / "g.yaml", GRID))
    engine = Engine(spec, budget=100)
    shadow: list = []  # the same run list, driven by sweeps.next_run directly
    handed = []
    while (params := engine.propose(f"r{len(handed)}")) is not None:
        expected = sweeps.next_run(engine.config, shadow)
        expected.name, expected.state = f"r{len(handed)}", sweeps.RunState.running
        shadow.append(expected)
        assert params == {k: v["value"] for k, v in expected.config.items()}
        handed.append((params["hidden"], params["lr"]))
    assert sorted(handed) == sorted((h, lr) for h in (8, 16, 32) for lr in (0.01, 0.001))


def test_bayes_proposals_print_no_scikit_learn_warnings(tmp_path, recwarn):
    """W&B's bayes fits scikit-learn's Gaussian process in the controller; its ConvergenceWarnings (about a
    length scale at its bound) are the engine's business and used to tear the live view."""
    import warnings

    from hpo import spec as specmod
    from hpo.backends.wandb.engine import Engine

    spec = specmod.load(write(tmp_path / "b.yaml", """
        name: b
        method: bayes
        metric: {name: score, goal: maximize}
        parameters:
          x: {distribution: uniform, min: 0.0, max: 1.0}
          y: {distribution: uniform, min: 0.0, max: 1.0}
    """))
    engine = Engine(spec, budget=14)
    warnings.simplefilter("always")
    for i in range(14):  # the same values each time: the fit's length scale runs into its bound
        assert engine.propose(f"r{i}") is not None
        engine.report(f"r{i}", {"score": 0.5})
        engine.end(f"r{i}", "complete")
    assert not [str(w.message) for w in recwarn.list], [str(w.message)[:120] for w in recwarn.list]


def test_engine_stops_what_sweeps_stop_runs_marks(tmp_path):
    from hpo import spec as specmod
    from hpo.backends.wandb.engine import Engine

    spec = specmod.load(write(tmp_path / "s.yaml", OFFLINE))
    engine = Engine(spec, budget=3)
    for name, acc in (("good", 0.9), ("mid", 0.5)):
        engine.propose(name)
        for step in range(3):
            assert not engine.report(name, {"val_acc": acc}) or name == "mid"
        engine.end(name, "complete")
    engine.propose("bad")
    stopped = [engine.report("bad", {"val_acc": 0.1}) for _ in range(3)]
    assert stopped[0] is False and any(stopped)  # band 1 (after 2 epochs): below the kept third
    assert engine.propose("over") is None, "budget of 3 runs"


def test_nested_parameters_reach_the_engine(tmp_path):
    """sweeps 0.2.0 drops nested blocks when it validates; hpo hands them over flattened."""
    from hpo import spec as specmod
    from hpo.backends.wandb.engine import Engine

    spec = specmod.load(write(tmp_path / "n.yaml", """
        method: random
        parameters:
          opt: {parameters: {lr: {min: 0.1, max: 0.2}, name: {values: [a, b]}}}
          epochs: {value: 1}
    """))
    params = Engine(spec, budget=1).propose("r0")
    assert set(params) == {"opt.lr", "opt.name", "epochs"}
    assert 0.1 <= params["opt.lr"] <= 0.2 and type(params["opt.lr"]) is float  # numpy 2 scalars made plain


# -- offline end to end -------------------------------------------------------------------------
@pytest.mark.slow
def test_offline_ten_runs_two_agents_hyperband(tmp_path, wandb_env):
    sweep = write(tmp_path / "sweep.yaml", OFFLINE)
    # --keep-models 0: this checks W&B's hyperband, whose stops depend on when runs reach their rungs; the
    # seconds a kept model adds at a trial's end shift that (models on W&B: the contract suite).
    out = run_hpo("run", str(sweep), "--backend", "wandb", "--offline", "--workers", "2", "--trials", "10",
                  "--keep-models", "0", "--no-progress", cwd=tmp_path, env=wandb_env, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    sweep_dir = tmp_path / "runs" / "wtiny"

    folders = sorted((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 10
    wb = {r["id"]: r for r in map(read_offline_run, folders)}
    assert len(wb) == 10 and {r["group"] for r in wb.values()} == {"wtiny"}

    trials = load_study(sweep_dir, "wtiny").get_trials()
    states = Counter(t.state for t in trials)
    assert len(trials) == 10 and states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 10
    assert states[TrialState.PRUNED] >= 1, "W&B hyperband from epoch 1 over a wide lr range stops runs"
    assert summary["pruned"] == states[TrialState.PRUNED]
    assert {t.user_attrs["hpo.worker"] for t in trials} == {"cpu0", "cpu1"}

    client, _, parents, children = runs_of(sweep_dir, "wtiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 10
    mlflow = {c.info.run_id: c for c in children}
    cut_short = False
    for t in trials:
        run = wb[t.user_attrs["wandb.run_id"]]
        child = mlflow[t.user_attrs["hpo.mlflow_run_id"]]
        assert run["config"] == t.params, "the wandb run's config is the config the engine proposed"
        assert child.data.params == {k: str(v) for k, v in t.params.items()}
        assert child.data.tags["hpo.backend"] == "wandb"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        epochs = [h["epoch"] for h in run["history"] if "epoch" in h]
        assert epochs == sorted(t.intermediate_values) and epochs[0] == 1
        if t.state == TrialState.PRUNED:
            assert child.info.status == "FINISHED" and child.data.tags["hpo.state"] == "pruned"
            assert t.user_attrs["hpo.reason"] == "stopped by W&B hyperband"
            # W&B checks a run again at every report after a band: a stop may come with the last one
            assert len(epochs) <= 6
            cut_short = cut_short or len(epochs) < 6
        else:
            assert child.info.status == "FINISHED" and len(epochs) == 6
        assert run["exit"] == 0
        steps = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in steps] == epochs
    assert cut_short, "W&B hyperband stopped no run before its last epoch"
    # The key was in every agent's environment and nowhere on disk.
    for path in sweep_dir.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert FAKE_KEY not in out.stderr + out.stdout


@pytest.mark.slow
def test_offline_grid_visits_every_point_once_across_agents(tmp_path, wandb_env):
    sweep = write(tmp_path / "grid.yaml", GRID)
    run_hpo("run", str(sweep), "--backend", "wandb", "--offline", "--workers", "2", "--no-progress",
            cwd=tmp_path, env=wandb_env, check=True)
    sweep_dir = tmp_path / "runs" / "wgrid"
    trials = load_study(sweep_dir, "wgrid").get_trials()
    assert sorted((t.params["hidden"], t.params["lr"]) for t in trials) == \
        sorted((h, lr) for h in (8, 16, 32) for lr in (0.01, 0.001))
    assert {t.user_attrs["hpo.worker"] for t in trials} == {"cpu0", "cpu1"}
    configs = [read_offline_run(f)["config"] for f in (sweep_dir / "wandb").glob("offline-run-*")]
    assert sorted((c["hidden"], c["lr"]) for c in configs) == sorted((t.params["hidden"], t.params["lr"]) for t in trials)


# -- online: launch plan and an unreachable server ------------------------------------------------
def test_agent_launch_plan_one_per_gpu_slot_no_key_in_argv():
    from hpo.backends.wandb.online import launch_plan
    from hpo.slots import plan

    slots = plan(["0", "1"], workers_per_gpu=2)
    base = {"PATH": "/usr/bin", "WANDB_API_KEY": FAKE_KEY, "CUDA_VISIBLE_DEVICES": "0,1"}
    launches = launch_plan(slots, sweep="ent/proj/abc123", count=7, base_env=base)
    assert [lp.env["CUDA_VISIBLE_DEVICES"] for lp in launches] == ["0", "0", "1", "1"]
    for lp in launches:
        argv = list(lp.argv)
        assert argv[1:3] == ["-m", "hpo.backends.wandb.agent"]
        assert argv[argv.index("--sweep") + 1] == "ent/proj/abc123" and argv[argv.index("--count") + 1] == "7"
        assert argv[argv.index("--name") + 1] == lp.slot.name
        assert lp.env["WANDB_API_KEY"] == FAKE_KEY, "the key travels in the inherited environment only"
        assert not any(FAKE_KEY in a for a in argv)
        assert FAKE_KEY not in lp.describe() and FAKE_KEY not in repr(lp)
        assert "CUDA_VISIBLE_DEVICES" in lp.describe()


def test_credentials_lookup_without_network(tmp_path):
    from hpo.backends.wandb.online import has_credentials

    netrc = tmp_path / "netrc"
    assert not has_credentials({"NETRC": str(netrc)})
    assert has_credentials({"WANDB_API_KEY": FAKE_KEY, "NETRC": str(netrc)})
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert has_credentials({"NETRC": str(netrc)})
    assert not has_credentials({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.com"})


def test_unreachable_wandb_server_is_one_clear_line(tmp_path, tiny_sweep):
    """The W&B cloud cannot exist on this machine: a server that refuses connections stands in for it."""
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": FAKE_KEY, "WANDB_MODE": "online",
           "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_CONFIG_DIR": str(tmp_path / "wbc"),
           "WANDB_CACHE_DIR": str(tmp_path / "wbcache"), "HOME": str(tmp_path)}
    out = run_hpo("run", str(tiny_sweep), "--backend", "wandb", "--project", "p", "--workers", "1",
                  cwd=tmp_path, env=env, timeout=300)  # ~11 s here (WANDB_HTTP_TIMEOUT=10 set by hpo)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and FAKE_KEY not in out.stderr + out.stdout
    errors = [line for line in out.stderr.splitlines() if not line.startswith("hpo: sweep 'tiny' on wandb")]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("hpo: wandb: cannot create the sweep on http://127.0.0.1:9")
    assert "--offline" in errors[0]
    assert not (tmp_path / "runs" / "tiny" / "mlflow.db").exists(), "nothing runs before the sweep exists"


def _start_offline(tmp_path: Path, wandb_env: dict, sweep: Path, busy_agents: int):
    """`hpo run --backend wandb --offline` (2 agents, 4 runs) in the background, once `busy_agents` are in a run."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **wandb_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", str(sweep), "--backend", "wandb", "--offline",
                             "--workers", "2", "--trials", "4", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "runs" / "wtiny"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the agents are inside a run (its MLflow child exists)
        time.sleep(0.5)
        # Read the MLflow store only once wandb runs exist: by then the controller has made its schema.
        if (len(list((sweep_dir / "wandb").glob("offline-run-*"))) >= busy_agents
                and len(runs_of(sweep_dir, "wtiny")[3]) >= busy_agents):
            break
    return proc, sweep_dir


def test_exponent_forms_reach_the_engine_as_the_same_law():
    """sweeps 0.2.0 rejects log_uniform & co. as deprecated; hpo hands it the `_values` form."""
    import math

    import yaml

    from hpo import spec as specmod
    from hpo.backends.wandb.engine import engine_config

    sp = specmod.from_dict(yaml.safe_load("""
        method: random
        parameters:
          a: {distribution: log_uniform, min: -5, max: -1}
          b: {distribution: inv_log_uniform, min: 1, max: 3}
    """))
    params = engine_config(sp)["parameters"]
    assert params["a"]["distribution"] == "log_uniform_values"
    assert (params["a"]["min"], params["a"]["max"]) == (math.exp(-5), math.exp(-1))
    assert (params["b"]["min"], params["b"]["max"]) == (math.exp(-3), math.exp(-1))


@pytest.mark.slow
def test_retries_rerun_a_failed_runs_params_offline(tmp_path, wandb_env):
    """--retries on W&B's engine: the controller hands a failed run's params out again, linked by hpo.retry_of."""
    sweep = write(tmp_path / "retry.yaml", """
        name: wretry
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          mode: {values: [ok, error]}
    """)
    out = run_hpo("run", str(sweep), "--backend", "wandb", "--offline", "--workers", "1", "--retries", "2",
                  "--trainer", "fault_trainers:faulty", "--no-progress", cwd=tmp_path,
                  env={**wandb_env, "PYTHONPATH": str(Path(__file__).parent)}, check=True)
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["complete"] == 1 and summary["failed"] == 1
    trials = load_study(tmp_path / "runs" / "wretry", "wretry").get_trials()
    errors = sorted((t for t in trials if t.params["mode"] == "error"), key=lambda t: t.number)
    assert len(errors) == 3, "the original and two retries"
    assert [t.user_attrs.get("hpo.retry_of") for t in errors] == [None, errors[0].number, errors[1].number]
    assert [t.user_attrs.get("hpo.attempt", 0) for t in errors] == [0, 1, 2]
    _, _, _, children = runs_of(tmp_path / "runs" / "wretry", "wretry")
    tagged = sorted(c.data.tags["hpo.retry_of"] for c in children if "hpo.retry_of" in c.data.tags)
    assert tagged == sorted(str(t.number) for t in errors[:2]), "the child runs say what they retry"
