"""Each engine's translation of one spec, checked on the objects it builds (no sweep runs here).

These guard the semantics a sweep could silently lose while every run still "works":
the pruner the workers use, the sampler's parallel behaviour, Ray's rungs, the budget,
slot indexes, password masking, the backend registry.
"""

from __future__ import annotations

import optuna
import pytest

from hpo import api, spec, storage
from hpo.backends import base
from hpo import distributions as space
from hpo.slots import plan
from hpo.trial import Outcome, Reporter, State, run_trainer

HB = {"type": "hyperband", "min_iter": 2, "eta": 3}


def make(method="random", early_terminate=HB, epochs=18, **extra):
    raw = {"method": method, "metric": {"name": "acc", "goal": "maximize"},
           "parameters": {"epochs": {"value": epochs}, "lr": {"distribution": "uniform", "min": 0.0, "max": 1.0}},
           **extra}
    if early_terminate:
        raw["early_terminate"] = early_terminate
    return spec.from_dict(raw)


@pytest.mark.parametrize("recorded", ["sha", "hyperband", None])
def test_optuna_workers_prune_with_the_sweeps_hyperband(tmp_path, recorded):
    """The worker loads the study with the pruner the study records, not Optuna's default MedianPruner:
    SuccessiveHalving (W&B's ladder) or Optuna's HyperbandPruner; a study from before the choice keeps Hyperband."""
    import json

    from hpo.backends.optuna.worker import WorkerConfig, load_study

    s = make()
    store = storage.open_storage(str(tmp_path / "optuna.log"))
    study = optuna.create_study(study_name="w", storage=store, direction="maximize")
    study.set_user_attr("hpo.spec", json.dumps(s.raw))
    if recorded:
        study.set_user_attr("hpo.optuna_pruner", recorded)
    study.set_user_attr("hpo.parent_run_id", "x")
    loaded, _ = load_study(WorkerConfig("w", str(tmp_path / "optuna.log")), wait=0)
    pruner = loaded.pruner
    if recorded == "sha":
        assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
        assert (pruner._min_resource, pruner._reduction_factor, pruner._min_early_stopping_rate) == (2, 3, 0)
    else:
        assert isinstance(pruner, optuna.pruners.HyperbandPruner)
        assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (2, 18, 3)
    assert isinstance(loaded.sampler, optuna.samplers.RandomSampler)


def test_bayes_is_tpe_with_constant_liar():
    """Parallel workers must not all sample next to the same pending trial."""
    sampler = space.sampler(make(method="bayes"))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar is True
    # independent TPE (Optuna 5 defaults to multivariate): the lower regret in bench/RESULTS.md "Search quality"
    assert sampler._multivariate is False
    from hpo import explain

    assert "search: Optuna TPESampler(constant_liar=True, multivariate=False)" in explain.explain(make(method="bayes"))


def test_optuna_schedule_lists_the_pruners_rungs():
    sched = base.get("optuna").schedule(make(), {})
    assert sched.runs and sched.stops_only_at_rungs
    assert list(sched.rungs) == [2, 6]  # one ladder from min_iter 2 by eta 3, below the last epoch 18
    assert "SuccessiveHalvingPruner(min_resource=2, reduction_factor=3" in sched.lines[0]
    assert any("--optuna-pruner hyperband: HyperbandPruner" in line for line in sched.lines)
    hb = base.get("optuna").schedule(make(), {"optuna_pruner": "hyperband"})
    assert list(hb.rungs) == [2, 6] and hb.lines[0].startswith("Optuna  HyperbandPruner(min_resource=2")


def test_ray_asha_rungs_come_from_min_iter():
    """grace_period = min_iter: ASHA's first cut is at step 2, then every eta-fold."""
    pytest.importorskip("ray")
    from hpo.backends.ray import space as ray_space

    sched = ray_space.scheduler(make(), "asha")
    assert sched._brackets[0]._rungs[-1][0] == 2  # the lowest milestone
    assert ray_space.rungs(make(), "asha") == [2, 6]
    assert list(base.get("ray").schedule(make(), {}).rungs) == [2, 6]


def test_wandb_schedule_is_its_band_ladder():
    sched = base.get("wandb").schedule(make(), {})
    assert list(sched.rungs) == [3, 7] and not sched.stops_only_at_rungs  # bands 2, 6 -> after 3, 7 reports


def test_every_engine_runs_list_choices():
    """Optuna once refused `values: [[1, 2], [3]]` (its choices are scalars); it holds them as JSON text now."""
    s = spec.from_dict({"method": "random", "metric": {"name": "acc"}, "early_terminate": HB,
                        "parameters": {"w": {"values": [[1, 2], [3]]},
                                       "v": {"values": [[1], [2]], "probabilities": [0.5, 0.5]}}})
    for engine in ("optuna", "ray", "wandb"):
        assert base.get(engine).schedule(s, {}).runs, engine


def test_run_cap_is_the_default_budget(tmp_path):
    (tmp_path / "s.yaml").write_text("method: random\nmetric: {name: acc}\nrun_cap: 3\n"
                                     "parameters:\n  lr: {distribution: uniform, min: 0, max: 1}\n")
    assert api.runs_what(api.prepare(api.Settings(tmp_path / "s.yaml", workers=1, root=tmp_path / "runs"))) is None
    assert api.prepare(api.Settings(tmp_path / "s.yaml", workers=1, root=tmp_path / "runs")).budget == 3
    assert api.prepare(api.Settings(tmp_path / "s.yaml", trials=5, workers=1, root=tmp_path / "runs")).budget == 5


def test_a_trials_value_is_its_last_report():
    def trainer(config, report):
        for step, value in enumerate([0.9, 0.5, 0.7], start=1):
            report(step, {"acc": value})

    out = run_trainer(trainer, {}, Reporter("acc", sink=lambda s, m: None))
    assert out == Outcome(State.COMPLETE, 0.7)


@pytest.mark.parametrize("n_gpus,per_gpu", [(2, 2), (4, 3)])
def test_slot_indexes_are_unique_with_several_workers_per_gpu(n_gpus, per_gpu):
    slots = plan([str(i) for i in range(n_gpus)], per_gpu)
    assert sorted(s.index for s in slots) == list(range(n_gpus * per_gpu))


@pytest.mark.parametrize("url", [
    "postgresql://hpo:s3cret@db:5432/hpo",
    "postgresql://hpo@db/hpo?password=s3cret",
    "postgresql+psycopg://db/hpo?sslmode=require&password=s3cret",
])
def test_passwords_are_masked_wherever_they_sit_in_the_url(url):
    shown = storage.mask(url)
    assert "s3cret" not in shown and "***" in shown


def test_an_error_that_quotes_a_secret_is_masked_in_the_trials_tags_and_the_clis_output(monkeypatch):
    """A trial's error (hpo.error, on the child run and the Optuna trial) and any line the CLI prints lose a
    URL's password and the value of a secret environment variable (hpo.redact)."""
    import io

    from hpo.redact import MaskingStream
    from hpo.trial import Outcome

    monkeypatch.setenv("WANDB_API_KEY", "planted-key-1234")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/not/a/secret/path")
    tags = Outcome(State.FAILED, reason="error",
                   error="POST http://u:pw-5678@mlflow:5000 failed; key planted-key-1234").tags()
    assert tags["hpo.error"] == "POST http://u:***@mlflow:5000 failed; key ***"
    out = io.StringIO()
    MaskingStream(out).write("env: planted-key-1234 at /not/a/secret/path; db postgresql://a:b-secret@h/d\n")
    assert out.getvalue() == "env: *** at /not/a/secret/path; db postgresql://a:***@h/d\n"


def test_one_state_vocabulary_maps_to_every_tool():
    from optuna.trial import TrialState

    assert [s.mlflow_status for s in State] == ["FINISHED", "FINISHED", "FAILED", "KILLED"]
    assert [s.optuna_state for s in State] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                               TrialState.FAIL]
    assert [s.wandb_state for s in State] == ["finished", "killed", "failed", "crashed"]


def test_the_registry_names_the_clis_engines():
    from hpo.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    backend = next(a for a in run._actions if a.dest == "backend")
    assert backend.metavar == "{optuna,ray,wandb,...}"  # the registry is checked by base.get: entry points too
    assert set(base.ENGINES) <= set(base.engines())
    for name in base.ENGINES:
        engine = base.get(name)
        assert engine.name == name and callable(engine.check) and callable(engine.run)
