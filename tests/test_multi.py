"""Multi-objective sweeps (`metrics:`) beyond the engine contract: W&B's `method: custom` form runs Optuna's
multi-objective TPE, `hpo best` shows the front as a table on a terminal, and bad `metrics:` input is one line.

Real parts: `python -m hpo` subprocesses, the Optuna journal read with Optuna's own API.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_study, run_hpo, write

TESTS = Path(__file__).resolve().parent
CUSTOM = """
name: mo
method: custom
metrics:
  - {name: score, goal: maximize}
  - {name: cost, goal: minimize}
parameters:
  epochs: {value: 2}
  x: {distribution: uniform, min: 0.0, max: 1.0}
"""


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_method_custom_runs_multi_objective_tpe_and_best_prints_the_front(tmp_path, engine):
    """Optuna's TPE, or Ray's OptunaSearch with the metric and mode lists."""
    write(tmp_path / "sweep.yaml", CUSTOM)
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS), "HPO_RAY_NUM_CPUS": "2", "RAY_ADDRESS": ""}
    out = run_hpo("run", "sweep.yaml", "--trials", "12", "--workers", "2", "--backend", engine, "--trainer",
                  "contract_trainers:two_objectives", "--no-progress", cwd=tmp_path, env=env, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    study = load_study(tmp_path / "runs" / "mo", "mo")
    assert len(study.directions) == 2 and summary["complete"] == 12
    front = sorted(t.user_attrs["hpo.mlflow_run_id"] for t in study.best_trials)
    assert sorted(f["run_id"] for f in summary["pareto"]) == front  # (Ray's searcher's trial ids are opaque)
    # The front is what Optuna says it is: no trial on it is beaten on both objectives by any trial.
    for t in study.best_trials:
        assert not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
                       for o in study.get_trials() if o.values)
    # On a terminal, `hpo best` prints the front as a table: one row per Pareto trial, every objective.
    main, child = pty.openpty()
    proc = subprocess.run([sys.executable, "-m", "hpo", "best", "sweep.yaml"], cwd=tmp_path, stdin=child,
                          stdout=child, stderr=subprocess.PIPE, env={**os.environ, **env}, timeout=120)
    os.close(child)
    text = os.read(main, 100_000).decode()
    os.close(main)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0].startswith("mo: Pareto front") and lines[1].split()[:3] == ["trial", "score", "cost"]
    assert len(lines) == 2 + len(front)


@pytest.mark.parametrize("block, line", [
    ("metric: {name: score, goal: maximize}\nmetrics: [{name: score, goal: maximize}, {name: cost, goal: minimize}]",
     "metrics: give either metric: (one objective) or metrics: (several), not both"),
    ("metrics: [{name: score, goal: maximize}]", "metrics: needs at least two metrics (got 1)"),
    ("metrics: [{name: score, goal: up}, {name: cost, goal: minimize}]", "metrics[0].goal: 'up' is not one of"),
    ("metrics: [{name: score, goal: maximize}, {name: score, goal: minimize}]", "metrics: 'score' is listed twice"),
    ("metrics: [{name: score, goal: maximize}, {name: cost, goal: minimize}]\n"
     "early_terminate: {type: hyperband, min_iter: 1}", "early_terminate: cannot stop trials of a multi-objective"),
])
def test_bad_metrics_are_one_line_and_write_nothing(tmp_path, block, line):
    write(tmp_path / "sweep.yaml", f"name: bad\nmethod: random\n{block}\nparameters:\n  x: {{values: [1, 2]}}\n")
    out = run_hpo("run", "sweep.yaml", "--trainer", "contract_trainers:two_objectives", cwd=tmp_path,
                  env={"PYTHONPATH": str(TESTS)})
    assert out.returncode == 2 and out.stderr.strip().startswith(line), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("engine", ["optuna", "ray"])
def test_an_objective_only_returned_by_train_still_counts(tmp_path, engine):
    """`cost` never goes through report(), only train()'s return value: every complete trial still has both
    values (Ray's side reads them from the trial's run), and the front is x >= 0.5."""
    write(tmp_path / "sweep.yaml", CUSTOM.replace("method: custom", "method: grid").replace(
        "x: {distribution: uniform, min: 0.0, max: 1.0}", "x: {values: [0.9, 0.2, 0.6, 0.4]}"))
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS), "HPO_RAY_NUM_CPUS": "2", "RAY_ADDRESS": ""}
    run_hpo("run", "sweep.yaml", "--workers", "2", "--backend", engine, "--trainer", "contract_trainers:cost_returned",
            "--no-progress", cwd=tmp_path, env=env, check=True)
    study = load_study(tmp_path / "runs" / "mo", "mo")
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and all(len(t.values) == 2 for t in complete)
    assert {float(t.params["x"]) for t in study.best_trials} == {0.9, 0.6}


def test_explain_names_every_objective_and_says_wandb_cannot_run_it(tmp_path):
    write(tmp_path / "sweep.yaml", CUSTOM)
    out = run_hpo("explain", "sweep.yaml", cwd=tmp_path, check=True)
    assert "metrics score (maximize), cost (minimize)" in out.stdout.splitlines()[0]
    found = json.loads(run_hpo("explain", "sweep.yaml", "--json", cwd=tmp_path, check=True).stdout)
    assert found["optuna"]["runs"] and found["ray"]["runs"] and not found["wandb"]["runs"]
    assert found["wandb"]["problem"].startswith("metrics: W&B's sweep engines optimise one metric")
