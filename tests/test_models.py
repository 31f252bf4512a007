"""The best model: kept as an MLflow model, registered with `--register`, reproducible from the parent run.

Real parts only: `python -m hpo run` subprocesses with real workers, a real SQLite MLflow store with its
Model Registry, models loaded back through `mlflow.pyfunc` and fed raw digits rows. The checks read the
stores with MLflow's own client. (The engine contract suite checks the same on Ray and W&B.)
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import mlflow_client, run_hpo, write

TESTS = Path(__file__).resolve().parent

DIGITS = """
name: {name}
method: random
metric: {{name: val_acc, goal: maximize}}
parameters:
  epochs: {{value: 4}}
  hidden: {{values: [16, 64]}}
  lr: {{distribution: log_uniform_values, min: 1.0e-3, max: 2.0e-2}}
  batch_size: {{value: 64}}
command: [python, -m, hpo.train, "${{args}}"]
"""

# The contract trainers' grid: a trial's model predicts its own x, so a prediction names the trial.
XS = """
name: {name}
method: grid
metric: {{name: score, goal: {goal}}}
parameters:
  epochs: {{value: 2}}
  x: {{values: {xs}}}
"""

CPU = {"CUDA_VISIBLE_DEVICES": ""}


def _json(out) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parent(client, exp_id: str):
    runs = client.search_runs([exp_id], filter_string="tags.`hpo.study` != ''", max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]


@pytest.fixture(scope="module")
def digits_sweep(tmp_path_factory):
    """The issue's `hpo run sweep.yaml --trials N --register digits`, small: 5 trials, 2 workers, K=2."""
    cwd = tmp_path_factory.mktemp("best-model")
    write(cwd / "sweep.yaml", DIGITS.format(name="bm"))
    out = run_hpo("run", "sweep.yaml", "--trials", "5", "--workers", "2", "--keep-models", "2",
                  "--register", "digits", "--no-progress", cwd=cwd, env=CPU, timeout=600, check=True)
    return cwd, _json(out)


@pytest.mark.slow
def test_the_registered_best_model_predicts_raw_digits_as_well_as_its_trial(digits_sweep):
    """`models:/digits@best` loads through pyfunc, takes raw `load_digits` rows (the preprocessing is inside)
    and scores the best trial's val_acc on the validation split; its version is the parent's best run."""
    import mlflow
    from sklearn.datasets import load_digits

    from hpo import data

    cwd, summary = digits_sweep
    client = mlflow_client(cwd / "runs" / "bm")
    exp = client.get_experiment_by_name("bm")
    parent = _parent(client, exp.experiment_id)
    mv = client.get_model_version_by_alias("digits", "best")
    assert mv.run_id == parent.data.tags["hpo.best_run_id"] == summary["best_run_id"]
    assert summary["registered"]["version"] == str(mv.version)
    assert mv.tags["hpo.trial"] == str(summary["best_trial"]) and mv.tags["hpo.metric"] == "val_acc"
    assert float(mv.tags["hpo.value"]) == pytest.approx(summary["best_value"])

    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'runs' / 'bm' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/digits@best")
    ds = data.load("digits")
    raw = ds.raw(ds.x_val)
    bunch = load_digits()
    assert raw.dtype == bunch.data.dtype and raw.shape[1] == bunch.data.shape[1] == 64
    # The validation rows are load_digits rows as they come (no scaling or reshaping done by the caller).
    assert any(np.array_equal(raw[0], row) for row in bunch.data)
    acc = float((np.asarray(model.predict(raw)).argmax(1) == ds.y_val.numpy()).mean())
    assert acc == pytest.approx(summary["best_value"], abs=0.01)
    assert float((np.asarray(model.predict(bunch.data[:1])).argmax(1) == bunch.target[:1]).mean()) in (0.0, 1.0)


@pytest.mark.slow
def test_only_the_best_k_keep_a_model_and_the_best_has_its_evaluation(digits_sweep):
    """--keep-models 2: at the end exactly the two best complete trials keep a model (the others' models are
    deleted), and the best child holds its confusion matrix and per-class figures from the validation split."""
    cwd, summary = digits_sweep
    client = mlflow_client(cwd / "runs" / "bm")
    exp = client.get_experiment_by_name("bm")
    children = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.trial` != ''", max_results=100)
    # Complete trials only (a pruned one is FINISHED too, and keeps no model); equal values may rank either way.
    complete = [c for c in children if c.data.tags.get("hpo.state") == "complete"]
    assert len(complete) >= 2
    kept = {c.info.run_id for c in children if c.data.tags.get("hpo.kept") == "true"}
    assert len(kept) == 2 and kept <= {c.info.run_id for c in complete}
    worst_kept = min(c.data.metrics["val_acc"] for c in complete if c.info.run_id in kept)
    assert all(c.data.metrics["val_acc"] <= worst_kept for c in complete if c.info.run_id not in kept)
    live = {m.source_run_id for m in client.search_logged_models([exp.experiment_id])}
    assert live == kept
    best = summary["best_run_id"]
    files = {a.path for a in client.list_artifacts(best, "evaluation")}
    assert files == {"evaluation/confusion_matrix.png", "evaluation/per_class.json"}
    local = Path(client.download_artifacts(best, "evaluation"))
    per_class = json.loads((local / "per_class.json").read_text())
    assert per_class["accuracy"] == pytest.approx(summary["best_value"], abs=1e-9)
    assert sorted(per_class["classes"]) == [str(i) for i in range(10)]
    assert sum(c["support"] for c in per_class["classes"].values()) == per_class["rows"]
    assert (local / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_parent_holds_the_environment_snapshot(digits_sweep):
    """requirements.txt (pinned), environment.json (Python, torch, CUDA, hpo, git, the command line), the sweep."""
    cwd, summary = digits_sweep
    client = mlflow_client(cwd / "runs" / "bm")
    parent = summary["parent_run_id"]
    local = Path(client.download_artifacts(parent, "environment"))
    reqs = (local / "requirements.txt").read_text().splitlines()
    assert any(r.lower().startswith("mlflow==") for r in reqs) and any(r.lower().startswith("torch==") for r in reqs)
    env = json.loads((local / "environment.json").read_text())
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    import torch

    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["cuda"] == (torch.version.cuda or None)
    assert "--register digits" in env["command"] and "git_sha" in env and "git_dirty" in env
    assert "sweep.yaml" in {a.path for a in client.list_artifacts(parent)}


@pytest.mark.slow
def test_best_model_prints_the_model_uri_and_the_registered_version(digits_sweep):
    cwd, summary = digits_sweep
    out = run_hpo("best", "sweep.yaml", "--model", cwd=cwd, check=True)
    best = _json(out)
    assert best["mlflow_run_id"] == summary["best_run_id"]
    assert best["model_uri"] == summary["registered"]["model_uri"]
    assert best["registered"] == [{"name": "digits", "version": summary["registered"]["version"],
                                   "uri": f"models:/digits/{summary['registered']['version']}", "aliases": ["best"]}]


def _xs_sweep(cwd: Path, name: str, xs: list[float], goal: str = "maximize") -> Path:
    return write(cwd / f"{name}.yaml", XS.format(name=name, goal=goal, xs=json.dumps(xs)))


def test_the_alias_moves_only_to_a_better_model(tmp_path):
    """Three sweeps register into one name in one store: the second (better) takes @best, the third (worse)
    is registered as version 3 but @best stays on version 2, and the summary says why."""
    store = f"sqlite:///{tmp_path / 'shared.db'}"

    def sweep(name: str, xs: list[float], goal: str = "maximize") -> dict:
        _xs_sweep(tmp_path, name, xs, goal)
        out = run_hpo("run", f"{name}.yaml", "--trainer", "contract_trainers:curve_model", "--workers", "1",
                      "--tracking-uri", store, "--register", "xs", "--no-progress", cwd=tmp_path,
                      env={**CPU, "PYTHONPATH": str(TESTS)}, check=True)
        return _json(out)["registered"]

    first, second, third = sweep("a", [0.5]), sweep("b", [0.9, 0.2]), sweep("c", [0.3])
    assert (first["version"], second["version"], third["version"]) == ("1", "2", "3")
    assert first["alias_best"] and second["alias_best"] and not third["alias_best"]
    assert "stays on version 2" in third["note"] and "0.9" in third["note"]
    from mlflow.tracking import MlflowClient

    import mlflow

    client = MlflowClient(store)
    assert str(client.get_model_version_by_alias("xs", "best").version) == "2"
    mlflow.set_tracking_uri(store)
    prediction = mlflow.pyfunc.load_model("models:/xs@best").predict(np.zeros((1, 1), dtype=np.float32))
    assert float(np.asarray(prediction).ravel()[0]) == pytest.approx(0.9)  # sweep b's best trial: x = 0.9
    # A sweep ranked by another goal is registered, but cannot take @best from a version it cannot compare to.
    other = sweep("d", [0.1], goal="minimize")
    assert other["version"] == "4" and not other["alias_best"] and "minimize" in other["note"]


def test_a_registry_that_refuses_keeps_the_results_and_exits_1(tmp_path):
    """The store refuses new model versions (a real SQLite trigger): the sweep's trials and parent stand,
    one line names the failure, exit code 1."""
    store = tmp_path / "shared.db"
    _xs_sweep(tmp_path, "warm", [0.5])
    env = {**CPU, "PYTHONPATH": str(TESTS)}
    run_hpo("run", "warm.yaml", "--trainer", "contract_trainers:curve", "--tracking-uri", f"sqlite:///{store}",
            "--workers", "1", "--no-progress", cwd=tmp_path, env=env, check=True)
    with sqlite3.connect(store) as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_versions "
                   "BEGIN SELECT RAISE(ABORT, 'model versions are frozen here'); END")
    _xs_sweep(tmp_path, "r", [0.7, 0.6])
    out = run_hpo("run", "r.yaml", "--trainer", "contract_trainers:curve_model", "--tracking-uri",
                  f"sqlite:///{store}", "--workers", "1", "--register", "frozen", "--no-progress",
                  cwd=tmp_path, env=env)
    assert out.returncode == 1, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("hpo: --register:") and "frozen" in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    summary = _json(out)
    assert summary["complete"] == 2 and summary["best_value"] == pytest.approx(0.702)
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(f"sqlite:///{store}").get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and "frozen" in parent.data.tags["hpo.register_error"]


def test_a_program_logs_its_own_model_and_register_uses_it(tmp_path):
    """Program mode: the program logs its model into $MLFLOW_RUN_ID with MLflow; --register registers the
    best trial's own model (its prediction is that trial's x)."""
    import shutil

    import mlflow

    shutil.copy(TESTS / "programs" / "mlflow_model.py", tmp_path)
    write(tmp_path / "sweep.yaml", """
        name: prog
        program: mlflow_model.py
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          x: {values: [0.75, 0.25]}
        """)  # the best first: registering the last trial's model would predict 0.25
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--register", "prog", "--no-progress",
                  cwd=tmp_path, env=CPU, check=True)
    reg = _json(out)["registered"]
    assert reg["version"] == "1" and reg["alias_best"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'prog' / 'mlflow.db'}")
    pred = mlflow.pyfunc.load_model("models:/prog@best").predict(np.zeros((1, 1), dtype=np.float32))
    assert float(np.asarray(pred).ravel()[0]) == pytest.approx(0.75)


@pytest.mark.parametrize("args, line", [
    (["--register", "team/digits"], "--register: Invalid model name 'team/digits'"),
    (["--register", " "], "--register: "),
    (["--keep-models", "-1"], "--keep-models: must be 0 or more (got -1)"),
    (["--register", "d", "--keep-models", "0"], "--register: needs a kept model"),
    (["--register", "d", "--space", "NOMETRIC"], "--register: the sweep has no metric"),
])
def test_bad_model_flags_are_one_line_and_write_nothing(tmp_path, tiny_sweep, args, line):
    if "NOMETRIC" in args:  # the same sweep without its metric (and so without early termination)
        text = tiny_sweep.read_text().replace("metric: {name: val_acc, goal: maximize}\n", "")
        tiny_sweep.write_text(text.replace("early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n", ""))
        args = args[:2]
    out = run_hpo("run", str(tiny_sweep), *args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(line) and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_trial_behind_the_best_k_logs_no_model(tmp_path):
    """Trials run best-first (one worker, a grid listed best-first): the first two keep a model, and no later
    trial logs one at all, since none enters the top 2 when it ends (a model is logged only when it does)."""
    _xs_sweep(tmp_path, "order", [0.9, 0.8, 0.7, 0.6, 0.5])
    out = run_hpo("run", "order.yaml", "--trainer", "contract_trainers:curve_model", "--workers", "1",
                  "--keep-models", "2", "--no-progress", cwd=tmp_path,
                  env={**CPU, "PYTHONPATH": str(TESTS)}, check=True)
    assert _json(out)["complete"] == 5
    client = mlflow_client(tmp_path / "runs" / "order")
    exp = client.get_experiment_by_name("order")
    children = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.trial` != ''", max_results=100)
    logged = {float(c.data.params["x"]): c.data.tags.get("hpo.kept") for c in children if "hpo.kept" in c.data.tags}
    assert logged == {0.9: "true", 0.8: "true"}
    assert len(client.search_logged_models([exp.experiment_id])) == 2


def test_ties_keep_the_earlier_trial_and_its_model_is_registered(tmp_path):
    """Three trials with the same value, --keep-models 1: the first keeps its model, the later two log none,
    and the best trial (the first of the tie) is the one registered."""
    write(tmp_path / "tie.yaml", """
        name: tie
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          epochs: {value: 2}
          x: {value: 0.5}
          y: {values: [1, 2, 3]}
        """)
    out = run_hpo("run", "tie.yaml", "--trainer", "contract_trainers:curve_model", "--workers", "1",
                  "--keep-models", "1", "--register", "tie", "--no-progress", cwd=tmp_path,
                  env={**CPU, "PYTHONPATH": str(TESTS)}, check=True)
    summary = _json(out)
    assert summary["complete"] == 3 and summary["registered"]["version"] == "1"
    client = mlflow_client(tmp_path / "runs" / "tie")
    assert client.get_model_version("tie", "1").run_id == summary["best_run_id"]
    kept = client.search_runs([client.get_experiment_by_name("tie").experiment_id],
                              filter_string="tags.`hpo.kept` != ''")
    assert [r.info.run_id for r in kept] == [summary["best_run_id"]]


def test_a_model_torch_export_cannot_trace_is_pickled_instead(tmp_path):
    """A model with data-dependent control flow, handed over with an input example: it is logged pickled
    (loadable, predicting its trial's x), and no half-made model is left behind."""
    import mlflow

    _xs_sweep(tmp_path, "branchy", [0.25])
    out = run_hpo("run", "branchy.yaml", "--trainer", "contract_trainers:curve_untraceable", "--workers", "1",
                  "--register", "branchy", "--no-progress", cwd=tmp_path,
                  env={**CPU, "PYTHONPATH": str(TESTS)}, check=True)
    assert _json(out)["registered"]["alias_best"]
    client = mlflow_client(tmp_path / "runs" / "branchy")
    models = client.search_logged_models([client.get_experiment_by_name("branchy").experiment_id])
    assert [str(m.status).upper().rsplit(".", 1)[-1] for m in models] == ["READY"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'branchy' / 'mlflow.db'}")
    pred = mlflow.pyfunc.load_model("models:/branchy@best").predict(np.zeros((1, 1), dtype=np.float32))
    assert float(np.asarray(pred).ravel()[0]) == pytest.approx(0.25)


def test_an_error_that_quotes_a_tracking_url_loses_its_password():
    from hpo.storage import mask_text

    text = mask_text("API request to https://alice:s3cret@mlflow.example:5000/api/2.0/x failed (see http://h/y)")
    assert "s3cret" not in text and "https://alice:***@mlflow.example:5000/api/2.0/x" in text and "http://h/y" in text
