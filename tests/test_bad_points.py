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
