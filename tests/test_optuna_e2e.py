"""End to end on the Optuna backend: real worker subprocesses, real journal, real MLflow store."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from optuna.trial import TrialState

from conftest import load_study, run_hpo, runs_of

pytestmark = pytest.mark.slow

MLFLOW_STATUS = {TrialState.COMPLETE: ("FINISHED", "complete"), TrialState.PRUNED: ("FINISHED", "pruned"),
                 TrialState.FAIL: ("FAILED", "failed")}


def test_twelve_trials_two_workers(tmp_path, tiny_sweep):
    out = run_hpo("run", str(tiny_sweep), "--workers", "2", "--trials", "12", "--no-progress", cwd=tmp_path, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    sweep_dir = tmp_path / "runs" / "tiny"

    study = load_study(sweep_dir, "tiny")
    trials = study.get_trials()
    states = Counter(t.state for t in trials)
    assert len(trials) == 12
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 12
    assert states[TrialState.PRUNED] >= 1, "hyperband from epoch 1 over a wide lr range must prune"
    assert summary["complete"] == states[TrialState.COMPLETE]
    assert {t.user_attrs["hpo.worker"] for t in trials} == {"cpu0", "cpu1"}

    client, exp, parents, children = runs_of(sweep_dir, "tiny")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    found = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                               max_results=1000)
    assert len(found) == 12
    by_trial = {int(r.data.tags["hpo.trial"]): r for r in found}
    for t in trials:
        run = by_trial[t.number]
        assert run.data.params == {k: str(v) for k, v in t.params.items()}
        status, tag = MLFLOW_STATUS[t.state]
        assert run.info.status == status and run.data.tags["hpo.state"] == tag
        assert run.data.tags["hpo.backend"] == "optuna"
        assert run.data.tags["hpo.dataset"] == "digits" and len(run.data.tags["hpo.dataset_fingerprint"]) == 16
        assert run.data.tags["hpo.torch"] and run.data.tags["hpo.python"]
        steps = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in steps] == sorted(t.intermediate_values)
    assert all(r.info.status != "RUNNING" for r in found)
    # The parent carries the summary and the sweep file.
    assert parent.data.metrics["trials_complete"] == states[TrialState.COMPLETE]
    assert parent.data.metrics["trials_pruned"] == states[TrialState.PRUNED]
    assert parent.data.metrics["best_val_acc"] == pytest.approx(study.best_value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "best.json"} <= artifacts


def test_gpu_slots_without_gpus(tmp_path, tiny_sweep):
    run_hpo("run", str(tiny_sweep), "--gpus", "0,1", "--workers-per-gpu", "2", "--trials", "8", "--no-progress",
            cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "0,1"}, check=True)  # GPUs 0 and 1, as far as hpo can tell
    sweep_dir = tmp_path / "runs" / "tiny"
    trials = load_study(sweep_dir, "tiny").get_trials()
    assert len(trials) == 8
    workers = {t.user_attrs["hpo.worker"]: t.user_attrs["hpo.cuda_visible_devices"] for t in trials}
    assert {t.user_attrs["hpo.cuda_visible_devices"] for t in trials} == {"0", "1"}
    assert set(workers) <= {"gpu0-w0", "gpu0-w1", "gpu1-w0", "gpu1-w1"}
    assert all(workers[w] == w[3] for w in workers)  # each worker saw exactly its own GPU
    logs = sorted(p.name for p in (sweep_dir / "logs").iterdir())
    assert logs == ["gpu0-w0.log", "gpu0-w1.log", "gpu1-w0.log", "gpu1-w1.log"]  # 4 workers started
    _, _, _, children = runs_of(sweep_dir, "tiny")
    assert {r.data.tags["hpo.cuda_visible_devices"] for r in children} == {"0", "1"}


def test_the_budget_holds_across_workers_and_a_resume_continues_the_same_study(tmp_path, tiny_sweep):
    """7 trials over 3 workers are exactly 7 (numbered 0-6, one child run each); the same sweep asked for 8
    goes on in the same study under its one parent run."""
    run_hpo("run", str(tiny_sweep), "--workers", "3", "--trials", "7", "--no-progress", cwd=tmp_path, check=True)
    sweep_dir = tmp_path / "runs" / "tiny"
    trials = load_study(sweep_dir, "tiny").get_trials()
    assert len(trials) == 7
    assert sorted(t.number for t in trials) == list(range(7))
    _, _, _, children = runs_of(sweep_dir, "tiny")
    assert len(children) == 7
    run_hpo("run", str(tiny_sweep), "--workers", "2", "--trials", "8", "--no-progress", cwd=tmp_path, check=True)
    trials = load_study(sweep_dir, "tiny").get_trials()
    assert len(trials) == 8 and all(t.state.is_finished() for t in trials)
    _, _, parents, children = runs_of(sweep_dir, "tiny")
    assert len(parents) == 1, "a resumed sweep reopens its one parent run"
    assert len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"


def test_grid_visits_every_point_once(tmp_path):
    from conftest import write

    sweep = write(tmp_path / "grid.yaml", """
        name: grid
        method: grid
        command: [python, -m, hpo.train, "${args}"]
        metric: {name: val_acc, goal: maximize}
        parameters:
          epochs: {value: 1}
          hidden: {values: [8, 16, 32]}
          lr: {values: [0.01, 0.001]}
          batch_size: {value: 256}
    """)
    run_hpo("run", str(sweep), "--workers", "2", "--no-progress", cwd=tmp_path, check=True)
    trials = load_study(tmp_path / "runs" / "grid", "grid").get_trials()
    points = sorted((t.params["hidden"], t.params["lr"]) for t in trials)
    assert points == sorted((h, lr) for h in (8, 16, 32) for lr in (0.01, 0.001))
