"""End to end on the Ray backend: `python -m hpo run --backend ray` on a real local Ray
(2 CPUs, no dashboard, shut down when the command ends), real MLflow store, real journal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_study, run_hpo, runs_of, write
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

RAY_ENV = {"HPO_RAY_NUM_CPUS": "2", "CUDA_VISIBLE_DEVICES": "", "RAY_ADDRESS": ""}
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

ASHA = """
    name: rt
    method: grid
    command: [python, -m, hpo.train, "${args}"]
    metric: {name: val_acc, goal: maximize}
    early_terminate: {type: hyperband, min_iter: 1, max_iter: 4, eta: 2}
    parameters:
      epochs: {value: 4}
      hidden: {value: 16}
      # Two good learning rates first set the rungs; the six hopeless ones after them must be cut.
      lr: {values: [0.05, 0.02, 1.0e-6, 2.0e-6, 3.0e-6, 4.0e-6, 5.0e-6, 6.0e-6]}
      optimizer: {value: adam}
      batch_size: {value: 128}
"""


def ray_trials(sweep_dir: Path):
    """Ray's own record of every Tuner the sweep ran (runs/NAME/ray/tune-*), oldest first."""
    from ray.tune import ExperimentAnalysis

    found = sorted((sweep_dir / "ray").glob("tune-*"), key=lambda p: p.stat().st_mtime)
    return [t for path in found for t in ExperimentAnalysis(str(path.resolve())).trials]


def summary(out) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_asha_eight_trials_mlflow_and_mirror(tmp_path):
    sweep = write(tmp_path / "sweep.yaml", ASHA)
    out = run_hpo("run", str(sweep), "--backend", "ray", "--workers", "2", "--trials", "8", "--no-progress",
                  cwd=tmp_path, env=RAY_ENV, check=True)
    sweep_dir = tmp_path / "runs" / "rt"
    assert "Trial status" not in out.stdout + out.stderr, "Ray's console table is off"
    assert "Token authentication" not in out.stderr  # Ray's notices go to its log, not into the view
    assert "Token authentication is enabled" in (sweep_dir / "logs" / "ray.log").read_text()

    trials = ray_trials(sweep_dir)
    assert len(trials) == 8 and {t.status for t in trials} == {"TERMINATED"}
    iters = {t.trial_id: t.last_result["training_iteration"] for t in trials}
    stopped = {tid for tid, n in iters.items() if n < 4}
    assert stopped, f"ASHA (min_iter 1, eta 2) over lr 1e-5..1e-1 must stop a trial early: {iters}"
    assert all(b == {"CPU": 1.0} for t in trials for b in t.placement_group_factory.bundles)

    client, _, parents, children = runs_of(sweep_dir, "rt")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8 and all(r.info.status != "RUNNING" for r in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_ray = {c.data.tags["hpo.ray_trial_id"]: c for c in children}
    for t in trials:
        run = by_ray[t.trial_id]
        assert run.data.params == {k: str(v) for k, v in t.config.items()}
        state = "pruned" if t.trial_id in stopped else "complete"
        assert run.data.tags["hpo.state"] == state and run.info.status == STATUS[state]
        assert run.data.tags["hpo.backend"] == "ray" and run.data.tags["hpo.dataset"] == "digits"
        assert run.data.tags["hpo.trial"] == str(int(t.trial_id.split("_")[-1]))
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, iters[t.trial_id] + 1))

    configs = {t.trial_id: t.config for t in trials}
    study = load_study(sweep_dir, "rt")
    mirrored = study.get_trials()
    assert len(mirrored) == 8
    states = Counter(m.state for m in mirrored)
    assert states[TrialState.PRUNED] == len(stopped) and states[TrialState.COMPLETE] == 8 - len(stopped)
    for m in mirrored:
        tid = m.user_attrs["hpo.ray_trial_id"]
        assert sorted(m.intermediate_values) == list(range(1, iters[tid] + 1))
        assert m.params == configs[tid]
        assert m.user_attrs["hpo.mlflow_run_id"] == by_ray[tid].info.run_id
        # named by the slot it held, as on the other engines (not Ray's host-pid), in the trial and its run
        assert m.user_attrs["hpo.worker"] in ("cpu0", "cpu1") and by_ray[tid].data.tags["hpo.worker"] == m.user_attrs["hpo.worker"]
    assert summary(out)["pruned"] == len(stopped)
    assert parents[0].data.metrics["best_val_acc"] == pytest.approx(study.best_value)


def test_gpu_fractions_on_logical_gpus_and_distributions_optuna_has_no_form_for(tmp_path):
    """One Ray sweep for two rules: 2 logical GPUs x 2 workers each get 0.5 GPU a trial, each trial pinned to
    its GPU; and W&B's q_normal / log_normal / q_log_uniform_values, which Optuna has no form for, are
    sampled by Ray with their law (q steps kept, lr positive and varied)."""
    sweep = write(tmp_path / "sweep.yaml", """
        name: normal
        method: bayes
        command: [python, -m, hpo.train, "${args}"]
        metric: {name: val_acc, goal: maximize}
        parameters:
          epochs: {value: 2}
          hidden: {values: [16, 32]}
          dropout: {distribution: q_normal, mu: 0.2, sigma: 0.05, q: 0.01}
          lr: {distribution: log_normal, mu: -6.0, sigma: 0.5}
          weight_decay: {distribution: q_log_uniform_values, min: 1.0e-6, max: 1.0e-3, q: 1.0e-6}
          batch_size: {value: 128}
    """)
    run_hpo("run", str(sweep), "--backend", "ray", "--gpus", "0,1", "--workers-per-gpu", "2", "--trials", "4",
            "--no-progress", cwd=tmp_path, env={**RAY_ENV, "CUDA_VISIBLE_DEVICES": "0,1"}, check=True)
    sweep_dir = tmp_path / "runs" / "normal"
    _, _, parents, children = runs_of(sweep_dir, "normal")
    tags = parents[0].data.tags
    assert json.loads(tags["hpo.ray.cluster_resources"])["GPU"] == 2.0, "Ray started with 2 logical GPUs"
    assert json.loads(tags["hpo.ray.trial_resources"])["gpu"] == 0.5 and tags["hpo.ray.concurrency"] == "4"
    trials = ray_trials(sweep_dir)
    assert len(trials) == 4
    assert all(b.get("GPU") == 0.5 for t in trials for b in t.placement_group_factory.bundles)
    seen = [c.data.tags["hpo.cuda_visible_devices"] for c in children]
    assert len(seen) == 4 and set(seen) == {"0", "1"}, seen
    mirrored = load_study(sweep_dir, "normal").get_trials()
    assert sorted(m.user_attrs["hpo.cuda_visible_devices"] for m in mirrored) == sorted(seen)

    assert len(children) == 4 and {c.data.tags["hpo.state"] for c in children} == {"complete"}
    dropout = [float(c.data.params["dropout"]) for c in children]
    lr = [float(c.data.params["lr"]) for c in children]
    assert len(set(dropout)) > 1 and all(abs(d * 100 - round(d * 100)) < 1e-6 for d in dropout)
    assert len(set(lr)) == 4 and all(lr_ > 0 for lr_ in lr)
    assert len(mirrored) == 4 and all(m.state == TrialState.COMPLETE for m in mirrored)
    assert all(m.distributions["lr"].low <= m.params["lr"] <= m.distributions["lr"].high for m in mirrored)
