"""A corpus of W&B programs in the shapes users write them (tests/corpus/, sources in SOURCES.md), each run
unchanged from its own sweep.yaml: every program on Optuna, and those whose shape meets what differs on
Ray Tune and offline W&B on those engines too (RUN_ON).

Each program writes what it received (argv, the values it parsed or read from wandb.config) and what it
logged to $SEEN_DIR/<its MLflow run id>.json. The tests compare that with what Optuna and MLflow recorded,
read with their own clients: the trial's params are the values the program got, the trial's value is the
last value the program logged (a closed form of its params, recomputed here), and each trial has one
MLflow child run holding the metric.

Every Ray run joins one Ray head started for this module (`ray start --head --block` in a session of its
own, stopped by ending that session: `ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import assert_optuna_reads, end_session, free_port, load_study, pid_alive, run_hpo, runs_of

pytestmark = pytest.mark.slow
CORPUS = Path(__file__).parent / "corpus"
BIN = str(Path(sys.executable).parent)


# -- each program: where its sweep is, its study and metric, and its metric as a function of its params ----
@dataclass(frozen=True)
class Program:
    sweep: str  # relative to the folder hpo runs from
    study: str
    metric: str
    expected: Callable[[dict, Path], float] | None  # the last logged value; None: no trial completes
    exit_code: int = 0


def _argparse(p, _):
    speed = p["lr"] * (2.0 if p["optimizer"] == "adam" else 1.0) * 32 / p["batch_size"]
    return round(1.0 - 1.0 / (1.0 + speed * p["epochs"]), 6)


def _hydra(p, _):  # model.depth 2 and optimizer.momentum 0.9 are the script's defaults
    capacity = 2 * p["model.width"] / 128.0
    return round(math.exp(-p["optimizer.lr"] * 1.9 * capacity * p["trainer.max_epochs"]), 6)


def _sys_exit(p, _):
    return round(1.0 / (1.0 + p["width"] * p["epochs"] / 100.0) + p["weight_decay"], 6)


def _folds(p, _):
    accs = [round(p["C"] / (p["C"] + p["gamma"]) * (0.5 + 0.1 * k), 6) for k in range(p["folds"])]
    return round(sum(accs) / len(accs), 6)


def _click(p, _):
    gain = {"relu": 1.0, "gelu": 1.1, "tanh": 0.9}[p["activation"]] * (1.5 if p["augment"] else 1.0)
    return round(min(1.0, p["learning-rate"] * p["num-layers"] * gain * p["epochs"]), 6)


def _subfolder(p, root):
    with open(root / "data" / "points.csv", newline="") as f:
        points = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(f)]
    return round(math.sqrt(sum((p["slope"] * x + p["intercept"] - y) ** 2 for x, y in points) / len(points)), 6)


def _shell(p, _):
    return round(1.0 - 1.0 / (1.0 + p["lr"] * p["hidden_size"] * p["steps"]), 6)


PROGRAMS = {
    "argparse_wandb": Program("sweep.yaml", "corpus-argparse", "val_acc", _argparse),
    "hydra_overrides": Program("sweep.yaml", "corpus-hydra", "val/loss", _hydra),
    "sys_exit_main": Program("sweep.yaml", "corpus-sysexit", "loss", _sys_exit),
    "multiprocessing_folds": Program("sweep.yaml", "corpus-multiprocessing", "cv_acc", _folds),
    "click_cli": Program("sweep.yaml", "corpus-click", "valid/F1", _click),
    "subfolder_repo": Program("sweeps/sweep.yaml", "corpus-subfolder", "val_rmse", _subfolder),
    "shell_wrapper": Program("sweep.yaml", "corpus-shell", "val_accuracy", _shell),
    "misnamed_metric": Program("sweep.yaml", "corpus-misnamed", "val acc", None, exit_code=1),
}
ENGINES = {"optuna": [], "ray": ["--backend", "ray"], "wandb": ["--backend", "wandb", "--offline"]}
# (program, engine) -> the hpo bug that keeps it from passing
XFAIL: dict[tuple[str, str], str] = {}  # (program, engine) -> a known hpo bug; none now


# -- what every run shares: one HOME, one place the programs write what they saw, one Ray head ------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    seen = root / "seen"
    seen.mkdir()
    env = {"SEEN_DIR": str(seen), "HOME": str(root), "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(root / "wbc"),
           "WANDB_CACHE_DIR": str(root / "wbcache"),
           "PATH": os.pathsep.join([BIN, os.environ.get("PATH", "")])}  # `python` in run.sh: this venv's
    return {"root": root, "seen": seen, "env": env, "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}


@pytest.fixture(scope="module")
def ray_head(shared, ray_temp_dir):
    """`ray start --head` once for every Ray run here: (its address, the env a driver needs to join it).

    The programs run in the head's Ray workers, so they get the head's environment: it carries $SEEN_DIR,
    HOME and PATH too. Stopped by its session's process group, so no other Ray on the machine is touched.
    """
    root = ray_temp_dir
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, **shared["env"], "RAY_ADDRESS": "", "CUDA_VISIBLE_DEVICES": "",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    port = free_port()
    head = subprocess.Popen([str(Path(BIN) / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(root),
                             "--block"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        said, ip = [], None
        for line in head.stdout:  # the address it advertises, then its word that it is up
            said.append(line)
            ip = ip or (re.search(r"Local node IP: (\S+)", line) or [None, None])[1]
            if "Ray runtime started" in line:
                break
        assert ip and head.poll() is None, "".join(said)[-3000:]
        threading.Thread(target=lambda: [None for _ in head.stdout], daemon=True).start()  # never a full pipe
        yield f"{ip}:{port}", {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    finally:
        end_session(head.pid, grace=1.0)  # `ray start --block` is slow to go
        head.wait(timeout=30)


@pytest.fixture(autouse=True)
def _no_wandb_credentials(monkeypatch):
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)


# Every program runs on Optuna. Running a program is one code path for every engine (hpo.program's
# ProgramTrainer, in a worker, a Ray trial or a W&B agent), and test_program runs it on each engine; Ray and
# W&B each run the programs whose shape meets what differs there: Ray runs them in its own worker processes,
# with the head's environment and cwd (the subfolder's repository root, pool workers of their own, sys.exit
# from main); the W&B agent makes the run from the program's own `wandb.init` and reads the metric from its
# history (wandb.config's values, hydra's dotted keys, a metric that is never logged under its name).
RUN_ON = {"optuna": set(PROGRAMS),
                   "ray": {"subfolder_repo", "multiprocessing_folds", "sys_exit_main", "shell_wrapper"},
                   "wandb": {"argparse_wandb", "hydra_overrides", "misnamed_metric", "click_cli"}}


def _cases():
    for engine in ENGINES:
        for name in PROGRAMS:
            if name not in RUN_ON[engine]:
                continue
            marks = [pytest.mark.xfail(strict=True, raises=UnlinkedTrial, reason=XFAIL[(name, engine)])
                     ] if (name, engine) in XFAIL else []
            yield pytest.param(name, engine, id=f"{name}-{engine}", marks=marks)


class UnlinkedTrial(AssertionError):
    """An Optuna trial does not name its MLflow child run (`hpo.mlflow_run_id`)."""


@pytest.mark.parametrize("name, engine", list(_cases()))
def test_a_corpus_program_runs_unchanged_and_its_values_are_recorded(name, engine, tmp_path, shared, request):
    prog = PROGRAMS[name]
    root = tmp_path / name
    shutil.copytree(CORPUS / name, root)
    study_name = f"{prog.study}-{engine}"  # one MLflow store for the module: an experiment per run
    args, env = list(ENGINES[engine]), dict(shared["env"])
    if engine == "ray":
        address, ray_env = request.getfixturevalue("ray_head")
        args += ["--ray-address", address]
        env.update(ray_env)
    out = run_hpo("run", prog.sweep, "--study", study_name, "--tracking-uri", shared["tracking_uri"],
                  "--workers", "2", "--no-progress", "--no-report", *args, cwd=root, env=env, timeout=400)
    assert out.returncode == prog.exit_code, out.stderr[-4000:]
    study = load_study(root / "runs" / study_name, study_name)
    trials = study.get_trials()
    assert len(trials) == 2, [(t.number, t.state.name, t.params) for t in trials]
    assert sorted(json.dumps(t.params, sort_keys=True) for t in trials) == sorted(
        json.dumps(p, sort_keys=True) for p in _grid(root / prog.sweep)), "the grid's 2 points, once each"

    client, _, parents, children = runs_of(shared["root"], study_name)
    assert len(parents) == 1 and len(children) == 2, [c.data.tags.get("hpo.trial") for c in children]
    by_number = {c.data.tags["hpo.trial"]: c for c in children}
    child_of = {t.number: by_number[str(t.user_attrs.get("hpo.trial", t.number))] for t in trials}
    saw = {}  # what each trial's program wrote, under its MLflow run id
    for t in trials:
        path = shared["seen"] / f"{child_of[t.number].info.run_id}.json"
        assert path.is_file(), f"trial {t.number} {t.params}: its program wrote nothing\n{out.stderr[-3000:]}"
        saw[t.number] = json.loads(path.read_text())
        assert saw[t.number]["program"] == name
        # the program received exactly the trial's parameters, with their types
        assert saw[t.number]["params"] == t.params, (saw[t.number], t.params)
        assert {k: type(v) for k, v in saw[t.number]["params"].items()} == {k: type(v) for k, v in t.params.items()}

    if prog.expected is None:  # the misnamed metric: every trial fails, naming the key it did log
        assert parents[0].info.status == "FAILED"
        assert "did you mean 'Val Acc'" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
        for t in trials:
            child = child_of[t.number]
            assert t.state.name == "FAIL" and t.user_attrs["hpo.reason"] == "no metric", t.user_attrs
            assert "did you mean 'Val Acc'" in t.user_attrs["hpo.error"], t.user_attrs["hpo.error"]
            assert child.info.status == "FAILED" and child.data.tags["hpo.reason"] == "no metric"
            assert "did you mean 'Val Acc'" in child.data.tags["hpo.error"]
            assert child.data.metrics["Val Acc"] == pytest.approx(saw[t.number]["logged"][-1]), "it was logged"
    else:
        assert parents[0].info.status == "FINISHED"
        for t in trials:
            child, logged = child_of[t.number], saw[t.number]["logged"]
            assert t.state.name == "COMPLETE", t.user_attrs
            assert logged[-1] == pytest.approx(prog.expected(t.params, root), abs=1e-9)
            assert t.value == pytest.approx(logged[-1], abs=1e-9), "the value is the last one the program logged"
            assert child.info.status == "FINISHED" and child.data.tags["hpo.state"] == "complete"
            assert child.data.metrics[prog.metric] == pytest.approx(t.value, abs=1e-9)
            history = [m.value for m in sorted(client.get_metric_history(child.info.run_id, prog.metric),
                                               key=lambda m: (m.step, m.timestamp))]
            assert history == pytest.approx(logged, abs=1e-9), "every logged value reached MLflow, in order"
            CHECKS[name](saw[t.number], t.params, root)
    assert_optuna_reads(study)
    unlinked = {t.number: t.user_attrs.get("hpo.mlflow_run_id") for t in trials
                if t.user_attrs.get("hpo.mlflow_run_id") != child_of[t.number].info.run_id}
    if unlinked:  # last: every other check above has passed
        raise UnlinkedTrial(f"trials without their MLflow run id: {unlinked}")


def _grid(sweep_file: Path) -> list[dict]:
    import itertools

    import yaml

    params = yaml.safe_load(sweep_file.read_text())["parameters"]
    names = list(params)
    choices = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


# -- what each shape must have received, beyond its values --------------------------------------------------
def _check_argparse(saw, params, _):
    assert sorted(saw["argv"]) == sorted(f"--{k}={v}" for k, v in params.items())
    assert saw["config"] == params, "wandb.config holds the sweep's values"


def _check_hydra(saw, params, _):
    assert sorted(saw["argv"]) == sorted(f"{k}={v}" for k, v in params.items()), "key=value, no hyphens"
    assert saw["cfg"]["optimizer"]["lr"] == params["optimizer.lr"] and saw["cfg"]["model"]["width"] == 128
    assert saw["cfg"]["model"]["depth"] == 2, "the defaults the overrides left alone"


def _check_sys_exit(saw, params, _):
    assert saw["argv"] == [], "no ${args}: the values came from wandb.config alone"


def _check_folds(saw, params, _):
    assert saw["workers"] and saw["parent"] not in saw["workers"], "the folds ran in worker processes"
    assert not [p for p in saw["workers"] if pid_alive(p)], "a worker process outlived its trial"


def _check_click(saw, params, _):
    assert ("--augment" in saw["argv"]) == params["augment"], saw["argv"]
    assert not [a for a in saw["argv"] if a.startswith("--augment=") or a == "--no-augment"]


def _check_subfolder(saw, params, root):
    assert saw["argv"] == [] and Path(saw["cwd"]) == root.resolve(), "it runs at the repository root"


def _check_shell(saw, params, _):
    assert saw["argv"][0] == "--run-name" and saw["argv"][1].startswith("sweep-"), "run.sh's own flag first"
    assert sorted(saw["argv"][2:]) == sorted(f"--{k}={v}" for k, v in params.items()), "run.sh passed $@ on"
    assert saw["omp"] == "1", "the wrapper's environment reached python"


CHECKS = {"argparse_wandb": _check_argparse, "hydra_overrides": _check_hydra, "sys_exit_main": _check_sys_exit,
          "multiprocessing_folds": _check_folds, "click_cli": _check_click, "subfolder_repo": _check_subfolder,
          "shell_wrapper": _check_shell}
