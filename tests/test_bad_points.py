"""One sweep with bad grid points and good ones, on every engine: each bad point is one FAILED trial whose
reason names what happened, the good points complete, the sweep ends 0 and Optuna's tools read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_optuna_reads, load_study, run_hpo, runs_of, write

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent
ENGINES = {"optuna": [], "ray": ["--backend", "ray"], "wandb": ["--backend", "wandb", "--offline"]}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_bad_grid_points_fail_alone_and_the_sweep_meets_its_budget(tmp_path, engine):
    sweep = write(tmp_path / "sweep.yaml", """
        name: points
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          point: {values: [good, exit0, sigkill, misspelled, better]}
    """)
    out = run_hpo("run", str(sweep), "--workers", "2", "--trainer", "fault_trainers:points", "--no-progress",
                  *ENGINES[engine], cwd=tmp_path, env={"PYTHONPATH": str(TESTS)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study(tmp_path / "runs" / "points", "points")
    trials = study.get_trials()
    last = {t.params["point"]: t for t in sorted(trials, key=lambda t: t.number)}
    assert {p: t.state.name for p, t in last.items()} == {
        "good": "COMPLETE", "better": "COMPLETE", "exit0": "FAIL", "sigkill": "FAIL", "misspelled": "FAIL"}
    assert (last["good"].value, last["better"].value) == (1.0, 2.0)
    assert study.best_trial.params == {"point": "better"}
    why = {p: (t.user_attrs.get("hpo.reason"), t.user_attrs.get("hpo.error", "")) for p, t in last.items()}
    assert why["exit0"][0] == "no metric" and "reported no metric at all" in why["exit0"][1], why["exit0"]
    assert why["misspelled"][0] == "no metric" and "did you mean 'Score'" in why["misspelled"][1], why
    assert why["sigkill"][0] == "kills its worker", why["sigkill"]
    said = "worker died ×2 — out of memory?" if engine == "ray" else "worker died (SIGKILL) ×2 — out of memory?"
    assert why["sigkill"][1].startswith(said), why["sigkill"]  # Ray's actors do not tell the signal
    # The killing point ran exactly twice (one re-run, then failed for good); the others once.
    runs = {p: sum(1 for t in trials if t.params.get("point") == p) for p in last}
    assert runs == {"good": 1, "better": 1, "exit0": 1, "sigkill": 2, "misspelled": 1}, runs
    summary = json.loads(out.stdout.splitlines()[-1])
    assert (summary["complete"], summary["failed"]) == (2, 3), summary
    assert_optuna_reads(study)
    _, _, _, children = runs_of(tmp_path / "runs" / "points", "points")
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert sorted(c.info.status for c in children) == ["FAILED"] * 4 + ["FINISHED"] * 2


def test_steps_out_of_order_or_repeated_end_at_the_highest_step_everywhere(tmp_path):
    """One rule for a trial's value: the report at its highest step; a repeated step's later report replaces
    the earlier one. Optuna's value and curve, MLflow's latest metric and `hpo best` agree."""
    sweep = write(tmp_path / "sweep.yaml", """
        name: steps
        method: grid
        metric: {name: score, goal: maximize}
        early_terminate: {type: hyperband, min_iter: 1, eta: 2}
        parameters:
          order: {values: ["1,2,2", "3,1,2"]}
    """)
    out = run_hpo("run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:steps", "--no-progress",
                  cwd=tmp_path, env={"PYTHONPATH": str(TESTS)})
    assert out.returncode == 0, out.stderr[-3000:]
    trials = {t.params["order"]: t for t in load_study(tmp_path / "runs" / "steps", "steps").get_trials()}
    assert trials["3,1,2"].value == pytest.approx(0.30)  # step 3's report, though step 2 came last
    assert trials["1,2,2"].value == pytest.approx(0.22)  # step 2's second report
    assert trials["1,2,2"].intermediate_values == pytest.approx({1: 0.10, 2: 0.22}), "what the pruner saw"
    client, _, _, children = runs_of(tmp_path / "runs" / "steps", "steps")
    for c in children:
        assert c.data.metrics["score"] == pytest.approx(trials[c.data.params["order"]].value)
    best = json.loads(run_hpo("best", str(sweep), cwd=tmp_path, check=True).stdout)
    assert best["params"] == {"order": "3,1,2"} and best["score"] == pytest.approx(0.30)
