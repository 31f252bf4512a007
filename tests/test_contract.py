"""The engine contract: one set of assertions, run against every engine.

In the style of Optuna's storage tests: each test body is written once and
parametrised over the engines hpo offers (`--backend optuna`, `--backend ray`,
`--backend wandb --offline`). Whatever engine runs the sweep, a user gets the
same things: the budget they asked for, one MLflow parent per sweep with an
honest summary, one child per trial with the right end status, a trial value
that is the last value reported, early stops where `hpo explain` says they can
happen, and the same behaviour when a worker dies, when every worker dies, when
the user presses Ctrl-C and resumes, and when every trial fails.

Everything runs the real CLI (`python -m hpo ...`) in a subprocess, and every
check reads the stores with Optuna's and MLflow's own clients (never hpo's code),
so the suite holds whatever shape hpo's internals take.

Speed: one finished sweep per engine (module-scoped) serves the assertion tests
1-5 and 10; the fault scenarios each need a sweep of their own.

The contract sweep is a grid over a categorical `x` listed best-first: every trial
after the first is behind some earlier trial at every step, so each engine's
Hyperband has something to stop whatever the timing (with random `x`, a 6-trial
Optuna run can land its trials in brackets where nothing is ever compared).
Nine grid points and a budget of six also show that the budget, not the grid,
ends the sweep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import assert_optuna_reads, pid_alive

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
ENGINES = ("optuna", "ray", "wandb", "random")  # random: a fourth engine from outside hpo (tests/engines)
ENGINE_FLAGS = {
    "optuna": ["--backend", "optuna"],
    "ray": ["--backend", "ray"],
    "wandb": ["--backend", "wandb", "--offline"],
    "random": ["--backend", "random"],
}
NAME = "contract"
BUDGET = 6
EPOCHS = 9
X_BEST_FIRST = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
HYPERBAND = {"type": "hyperband", "min_iter": 1, "eta": 3}
# The steps at which each engine may stop a trial of that Hyperband over EPOCHS = 9, worked out by hand, not by
# hpo: Optuna's SuccessiveHalving / Hyperband (the Optuna engine's and the fourth, random engine's) and Ray's ASHA
# promote at min_iter * eta**k = 1, 3 (9 is the last epoch); W&B's sweeps engine compares history[band] for bands
# 1, 3, i.e. the 2nd and 4th report.
RUNGS = {"optuna": [1, 3], "ray": [1, 3], "wandb": [2, 4], "random": [1, 3]}
STATUS_OF = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}  # pruned: FINISHED + hpo.state

# Safety limits only (a hung sweep fails instead of blocking the suite); nothing here is timed.
RUN_TIMEOUT = 300
CRASH_LOOP_TIMEOUT = 150


# -- running the CLI ---------------------------------------------------------------------------
@dataclass
class Ran:
    """One finished (or killed) `python -m hpo ...` command."""

    args: tuple[str, ...]
    code: int | None
    out: str
    err: str
    timed_out: bool = False

    def describe(self) -> str:
        state = "still running, killed" if self.timed_out else f"exit {self.code}"
        return (f"`hpo {' '.join(self.args)}`: {state}\n--- stdout (tail)\n{self.out[-3000:]}"
                f"\n--- stderr (tail)\n{self.err[-3000:]}")

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON object on the last line of stdout."""
        lines = self.out.strip().splitlines()
        assert lines, f"no summary line on stdout\n{self.describe()}"
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            raise AssertionError(f"last stdout line is not JSON\n{self.describe()}") from None


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The contract trainers import from this folder, the fourth engine (and its entry point) from engines/;
    # keep whatever PYTHONPATH the suite runs under.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(TESTS / "engines"), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def hpo(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = RUN_TIMEOUT) -> Ran:
    """`python -m hpo ARGS` in `cwd`, in a session of its own so a hung run can be killed whole."""
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=_env(env or {}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return Ran(tuple(args), None, out, err, timed_out=True)
    return Ran(tuple(args), proc.returncode, out, err)


def ok(ran: Ran) -> None:
    assert not ran.timed_out and ran.code == 0, ran.describe()


def one_line(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def engine_env(engine: str, home: Path) -> dict[str, str]:
    """CPU only; Ray on 2 CPUs; W&B offline with its folders (and HOME) in the test's folder."""
    env = {"CUDA_VISIBLE_DEVICES": ""}
    if engine == "ray":
        env.update(HPO_RAY_NUM_CPUS="2", RAY_ADDRESS="")
    if engine == "wandb":
        wb = home / "wandb-home"
        env.update(WANDB_MODE="offline", WANDB_DIR=str(wb), WANDB_CACHE_DIR=str(wb / "cache"),
                   WANDB_CONFIG_DIR=str(wb / "config"), WANDB_SILENT="true", HOME=str(home), WANDB_API_KEY="")
    return env


# -- the stores, through Optuna's and MLflow's own clients -------------------------------------
def load_study(journal: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    assert journal.is_file(), f"no Optuna journal at {journal}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


def mlflow_runs(db: Path, name: str):
    """(client, parent runs, child runs) of the experiment `name` in the SQLite store `db`."""
    from mlflow.tracking import MlflowClient

    assert db.is_file(), f"no MLflow store at {db}"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r} in {db}"
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def history(client, run_id: str, key: str = "score") -> dict[int, float]:
    """A run's metric history as {step: value}."""
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def last_score(client, run_id: str) -> float:
    h = history(client, run_id)
    assert h, f"run {run_id} has no `score` history"
    return h[max(h)]


# -- sweeps ------------------------------------------------------------------------------------
def sweep_yaml(name: str, extra: dict[str, Any] | None = None, *, x: Any = None, method: str = "grid",
               early_terminate: dict | None = HYPERBAND, epochs: int = EPOCHS) -> str:
    raw: dict[str, Any] = {"name": name, "method": method, "metric": {"name": "score", "goal": "maximize"}}
    if early_terminate:
        raw["early_terminate"] = dict(early_terminate)
    raw["parameters"] = {"epochs": {"value": epochs}, "x": x or {"values": X_BEST_FIRST}, **(extra or {})}
    return yaml.safe_dump(raw, sort_keys=False)


@dataclass
class Sweep:
    """A sweep file in its own folder, and how to run it on one engine."""

    engine: str
    cwd: Path
    file: Path
    name: str

    @classmethod
    def make(cls, engine: str, cwd: Path, name: str, text: str | None = None, **kw: Any) -> "Sweep":
        path = cwd / f"{name}.yaml"
        path.write_text(text if text is not None else sweep_yaml(name, **kw))
        return cls(engine, cwd, path, name)

    @property
    def dir(self) -> Path:
        return self.cwd / "runs" / self.name

    @property
    def env(self) -> dict[str, str]:
        return engine_env(self.engine, self.cwd)

    def run_args(self, *args: str) -> list[str]:
        return ["run", str(self.file), *ENGINE_FLAGS[self.engine], "--workers", "2", "--no-progress", *args]

    def run(self, *args: str, timeout: float = RUN_TIMEOUT) -> Ran:
        return hpo(*self.run_args(*args), cwd=self.cwd, env=self.env, timeout=timeout)

    def cli(self, *args: str) -> Ran:
        return hpo(*args, cwd=self.cwd, env=self.env, timeout=120)

    def study(self):
        return load_study(self.dir / "optuna.log", self.name)

    def mlflow(self):
        return mlflow_runs(self.dir / "mlflow.db", self.name)


def _states(trials) -> Counter:
    return Counter(t.state.name for t in trials)


def running(trials) -> list[tuple[int, dict[str, Any]]]:
    """The trials still RUNNING, with their user attrs (for the failure message)."""
    return [(t.number, t.user_attrs) for t in trials if t.state.name == "RUNNING"]


def child_of(children, trial):
    """The MLflow child run of an Optuna trial (matched on the params; `x` is unique per grid point)."""
    found = [c for c in children if c.data.params.get("x") is not None
             and float(c.data.params["x"]) == float(trial.params["x"])]
    assert len(found) == 1, f"trial {trial.number} (x={trial.params['x']}) has {len(found)} child runs"
    return found[0]


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def finished(engine, tmp_path_factory) -> tuple[Sweep, Ran]:
    """The contract sweep run to its end once per engine: 6 trials of `curve` (returning a "model" that
    predicts its own x), 2 workers, Hyperband, the best model registered."""
    sw = Sweep.make(engine, tmp_path_factory.mktemp(f"contract-{engine}"), NAME)
    return sw, sw.run("--trials", str(BUDGET), "--trainer", "contract_trainers:curve_model", "--register", NAME)


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> Ran:
    """`hpo explain --json` of the contract sweep (the same file every engine runs)."""
    sw = Sweep.make("optuna", tmp_path_factory.mktemp("explain"), NAME)
    return hpo("explain", str(sw.file), "--json", cwd=sw.cwd, timeout=120)


def explain_json(ran: Ran) -> dict[str, Any]:
    assert not ran.timed_out and ran.code == 0, ran.describe()
    try:
        data = json.loads(ran.out)
    except json.JSONDecodeError:
        raise AssertionError(f"`hpo explain --json` did not print one JSON object\n{ran.describe()}") from None
    assert isinstance(data, dict) and set(ENGINES) <= set(data), f"one entry per engine expected: {data}"
    for name in ENGINES:
        entry = data[name]
        assert isinstance(entry.get("runs"), bool), (name, entry)
        assert entry.get("problem") is None or isinstance(entry["problem"], str), (name, entry)
        assert isinstance(entry.get("rungs"), list) and all(isinstance(r, int) for r in entry["rungs"]), (name, entry)
        assert isinstance(entry.get("stops_only_at_rungs"), bool), (name, entry)
    return data


# -- 1-5: one finished sweep per engine --------------------------------------------------------
def test_budget_is_exactly_the_trials_asked_for(finished):
    """`--trials 6` gives exactly 6 trials: counted in the summary and present in the Optuna study
    (Ray and W&B trials mirrored in), each COMPLETE or PRUNED, with the same counts in both."""
    sw, ran = finished
    ok(ran)
    s = ran.summary
    assert s["complete"] + s["pruned"] + s["failed"] == BUDGET, s
    assert s["study"] == NAME and s["interrupted"] is False, s
    trials = sw.study().get_trials()
    states = _states(trials)
    assert len(trials) == BUDGET, f"{len(trials)} trials in the study: {states}"
    assert set(states) <= {"COMPLETE", "PRUNED"}, states
    assert (states["COMPLETE"], states["PRUNED"], s["failed"]) == (s["complete"], s["pruned"], 0), (states, s)


def test_the_report_draws_what_the_engine_did(finished, engine, explained):
    """Every engine's sweep ends with runs/NAME/report.html (also on the parent run): one learning curve
    per trial, the engine's own rungs drawn on them, a timeline row per worker slot."""
    from hpo.htmlreport import figure

    sw, ran = finished
    ok(ran)
    page = (sw.dir / "report.html").read_text()
    trials = [t for t in sw.study().get_trials() if t.intermediate_values]
    curves = figure(page, "curves")
    drawn_trials = {n for trace in curves["data"] for n in trace["customdata"] if n is not None}
    assert drawn_trials == {t.number for t in trials} and len(trials) == BUDGET, drawn_trials
    drawn = sorted(shape["x0"] for shape in curves["layout"].get("shapes", []))
    assert drawn == RUNGS[engine] == explain_json(explained)[engine]["rungs"], (drawn, engine)
    slots = {y.split(" (")[0] for trace in figure(page, "timeline")["data"] for y in trace["y"]}
    assert slots == {t.user_attrs["hpo.worker"] for t in sw.study().get_trials()}, slots
    complete = len([t for t in sw.study().get_trials() if t.state.name == "COMPLETE"])
    why = f"{complete} complete trials; PED-ANOVA" if complete >= 2 else "fewer than 2 complete trials"
    assert f"<p>importance: not drawn ({why}" in page  # too few to rank parameters
    client, parents, _ = sw.mlflow()
    assert "report.html" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]


def test_parent_run_summarises_the_sweep(finished):
    """One FINISHED parent run whose summary agrees with the summary line and the Optuna study, and
    whose best-run tags point at a child of this parent that really reached the best value."""
    sw, ran = finished
    ok(ran)
    s = ran.summary
    client, parents, children = sw.mlflow()
    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.run_id == s["parent_run_id"]
    assert parent.info.status == "FINISHED"
    metrics, tags = parent.data.metrics, parent.data.tags
    for key in ("complete", "pruned", "failed"):
        assert metrics.get(f"trials_{key}") == s[key], (key, metrics, s)
    complete = [t.value for t in sw.study().get_trials() if t.state.name == "COMPLETE"]
    assert complete, "no complete trial"
    assert s["best_value"] == pytest.approx(max(complete))
    assert metrics.get("best_score") == pytest.approx(s["best_value"]), metrics
    assert "hpo.best_run_id" in tags, f"parent has no hpo.best_run_id tag: {sorted(tags)}"
    best = {c.info.run_id: c for c in children}.get(tags["hpo.best_run_id"])
    assert best is not None, f"hpo.best_run_id {tags['hpo.best_run_id']} is not a child run"
    assert best.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert last_score(client, best.info.run_id) == pytest.approx(metrics["best_score"])
    assert tags.get("hpo.best_trial") == best.data.tags.get("hpo.trial"), (tags.get("hpo.best_trial"),
                                                                          best.data.tags.get("hpo.trial"))


def test_the_best_trials_model_is_kept_and_registered(finished):
    """The trainer returns its model: the best complete trial's is logged on its child run and registered
    as `contract@best` (its run is the parent's hpo.best_run_id, its prediction is that trial's x); at most
    the best 3 complete trials keep a model, and no pruned trial does."""
    import numpy as np

    import mlflow

    sw, ran = finished
    ok(ran)
    client, parents, children = sw.mlflow()
    best_run = parents[0].data.tags["hpo.best_run_id"]
    version = client.get_model_version_by_alias(NAME, "best")
    assert version.run_id == best_run and ran.summary["registered"]["version"] == str(version.version)
    mlflow.set_tracking_uri(f"sqlite:///{sw.dir / 'mlflow.db'}")
    predicted = np.asarray(mlflow.pyfunc.load_model(f"models:/{NAME}@best").predict(
        np.zeros((1, 1), dtype=np.float32))).ravel()[0]
    best_x = float({c.info.run_id: c for c in children}[best_run].data.params["x"])
    assert float(predicted) == pytest.approx(best_x)
    kept = [c for c in children if c.data.tags.get("hpo.kept") == "true"]
    assert best_run in {c.info.run_id for c in kept} and len(kept) <= 3
    assert all(c.info.status == "FINISHED" for c in kept), [c.info.status for c in kept]


MULTI = {"name": "multi", "method": "grid",
         "metrics": [{"name": "score", "goal": "maximize"}, {"name": "cost", "goal": "minimize"}],
         "parameters": {"epochs": {"value": 3}, "x": {"values": [0.9, 0.3, 0.7, 0.2, 0.5]}}}


def test_a_multi_objective_sweep_records_its_pareto_front(engine, tmp_path):
    """`metrics:` (two goals; a grid, so every point runs once): every complete trial's values are the last
    reported score and cost; `hpo best` prints Optuna's own Pareto front (here: the
    trials with x >= 0.5), its children are tagged hpo.pareto, the parent holds pareto.json. W&B's engines
    optimise one metric: one line, exit 2, nothing written."""
    sw = Sweep.make(engine, tmp_path, "multi", text=yaml.safe_dump(MULTI, sort_keys=False))
    ran = sw.run("--trials", "5", "--trainer", "contract_trainers:two_objectives")
    if engine == "wandb":
        assert ran.code == 2 and one_line(ran.err) == [one_line(ran.err)[0]], ran.describe()
        assert one_line(ran.err)[0].startswith("metrics: W&B's sweep engines optimise one metric"), ran.err
        assert not (tmp_path / "runs").exists()
        return
    ok(ran)
    study = sw.study()
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"] and study.metric_names == ["score", "cost"]
    client, parents, children = sw.mlflow()
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) == 5, _states(study.get_trials())
    for t in complete:
        child = child_of(children, t)
        assert t.values == pytest.approx([last_score(client, child.info.run_id),
                                          history(client, child.info.run_id, "cost")[3]])
    assert all(t.intermediate_values for t in complete)  # the first objective per step: the report's curves
    front = {float(t.params["x"]) for t in study.best_trials}
    assert front == {0.9, 0.7, 0.5}
    best = json.loads(sw.cli("best", str(sw.file)).out.strip().splitlines()[-1])
    assert {float(f["params"]["x"]) for f in best["pareto"]} == front
    assert {float(c.data.params["x"]) for c in children if c.data.tags.get("hpo.pareto") == "true"} == front
    assert {float(f["params"]["x"]) for f in ran.summary["pareto"]} == front
    local = client.download_artifacts(parents[0].info.run_id, "pareto.json")
    assert {float(f["params"]["x"]) for f in json.loads(Path(local).read_text())} == front
    assert 'id="pareto"' in (sw.dir / "report.html").read_text()
    assert_optuna_reads(study)


def test_one_child_run_per_trial_with_its_end_status(finished, engine):
    """Every trial is one child of the parent, tagged with the engine, none left RUNNING; its status
    follows its state (complete and pruned FINISHED, failed FAILED; hpo.state says which) and matches the Optuna trial."""
    sw, ran = finished
    ok(ran)
    _, parents, children = sw.mlflow()
    assert len(children) == BUDGET, f"{len(children)} child runs for {BUDGET} trials"
    for c in children:
        tags = c.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags.get("hpo.backend") == engine, tags.get("hpo.backend")
        assert c.info.status != "RUNNING", c.info.run_id
        assert tags.get("hpo.state") in STATUS_OF, tags.get("hpo.state")
        assert c.info.status == STATUS_OF[tags["hpo.state"]], (tags["hpo.state"], c.info.status)
    for t in sw.study().get_trials():
        state = child_of(children, t).data.tags["hpo.state"]
        assert state == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name], (t.number, state)


def test_trial_value_is_the_last_reported_value(finished):
    """A complete trial's value is the value it reported at its last step (not its first, not its best),
    in the Optuna study and in its MLflow child's metric history alike."""
    sw, ran = finished
    ok(ran)
    client, _, children = sw.mlflow()
    complete = [t for t in sw.study().get_trials() if t.state.name == "COMPLETE"]
    assert complete, "no complete trial"
    for t in complete:
        steps = t.intermediate_values
        assert steps, f"trial {t.number} has no intermediate values"
        last, first = max(steps), min(steps)
        assert steps[first] != pytest.approx(steps[last]), "the curve moves: the test can tell first from last"
        assert t.value == pytest.approx(steps[last]), (t.number, t.value, steps)
        assert last_score(client, child_of(children, t).info.run_id) == pytest.approx(t.value), t.number


def test_trials_are_stopped_only_where_explain_says(finished, engine, explained):
    """`hpo explain --json` tells, per engine, at which steps a trial may be stopped; every pruned trial
    (Optuna study or MLflow child) last reported at such a step. And Hyperband did stop something."""
    sw, ran = finished
    ok(ran)
    info = explain_json(explained)[engine]
    assert info["runs"] is True and info["problem"] is None, info
    rungs = info["rungs"]
    assert rungs == RUNGS[engine], f"{engine}: explain says {rungs}, the engine's own rule gives {RUNGS[engine]}"
    client, _, children = sw.mlflow()
    stopped = [(f"trial {t.number}", max(t.intermediate_values))
               for t in sw.study().get_trials() if t.state.name == "PRUNED" and t.intermediate_values]
    stopped += [(f"run {c.info.run_id}", max(history(client, c.info.run_id)))
                for c in children if c.data.tags.get("hpo.state") == "pruned"]
    assert stopped, f"{engine}: no trial was pruned (x from {X_BEST_FIRST[0]} down to {X_BEST_FIRST[-1]})"
    for what, step in stopped:
        if info["stops_only_at_rungs"]:
            assert step in rungs, f"{engine}: {what} stopped after step {step}, not a rung of {rungs}"
        else:
            assert step >= min(rungs), f"{engine}: {what} stopped after step {step}, before the first rung {rungs}"


# -- 6-9: faults -------------------------------------------------------------------------------
def test_a_worker_killed_mid_trial_fails_that_trial_and_the_budget_holds(engine, tmp_path):
    """A trainer SIGKILLs its own process once: that trial ends FAILED ('worker died') and the sweep
    still finishes 4 trials, with nothing left RUNNING in MLflow or Optuna."""
    marker = tmp_path / "died"
    sw = Sweep.make(engine, tmp_path, "dead", extra={"marker": {"value": str(marker)}})
    ran = sw.run("--trials", "4", "--trainer", "contract_trainers:die_once")
    assert marker.exists(), "the trainer never ran"
    ok(ran)
    s = ran.summary
    assert s["complete"] + s["pruned"] == 4, s
    _, parents, children = sw.mlflow()
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1, f"{len(failed)} FAILED children: {[c.data.tags.get('hpo.reason') for c in failed]}"
    assert failed[0].data.tags.get("hpo.reason") == "worker died", failed[0].data.tags
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert parents[0].info.status == "FINISHED"
    trials = sw.study().get_trials()
    assert not running(trials), f"Optuna trials left RUNNING: {running(trials)}"
    assert _states(trials)["COMPLETE"] + _states(trials)["PRUNED"] == 4, _states(trials)


def test_a_crash_loop_ends_the_sweep_as_failed(engine, tmp_path):
    """Every trial kills its worker: the sweep gives up (exit 1) instead of replacing workers forever;
    the parent run ends FAILED and no child run or Optuna trial is left RUNNING."""
    sw = Sweep.make(engine, tmp_path, "loop")
    ran = sw.run("--trials", "3", "--trainer", "contract_trainers:die_always", timeout=CRASH_LOOP_TIMEOUT)
    assert not ran.timed_out, f"the crash loop did not end the sweep\n{ran.describe()}"
    assert ran.code == 1, ran.describe()
    last = one_line(ran.err)[-1] if one_line(ran.err) else ""
    assert "workers keep dying" in last and "deaths in a row with no trial finished" in last, last
    _, parents, children = sw.mlflow()
    assert len(parents) == 1 and parents[0].info.status == "FAILED", [p.info.status for p in parents]
    assert not [c for c in children if c.info.status == "RUNNING"]
    trials = sw.study().get_trials()
    assert not running(trials), f"Optuna trials left RUNNING: {running(trials)}"


def test_ctrl_c_then_the_same_command_resumes_under_the_same_parent(engine, tmp_path):
    """SIGINT while trials run: exit 130, every process of the sweep gone, parent KILLED, the running trials
    FAIL `interrupted` in Optuna and KILLED in MLflow, nothing RUNNING. The same command again: exit 0, the
    same MLflow parent run (reopened, not a second one), and each grid point finished exactly once: what
    finished before Ctrl-C is not run again, and the study's finished trials are the finished child runs."""
    from hpo.worker_pool import descendants
    from optuna.trial import TrialState

    # No early termination here. Every trial waits after its first epoch while `hold` exists (and says so in
    # `hold.<pid>`), so Ctrl-C, sent once one does, lands while trials run however slow the machine.
    hold = tmp_path / "hold"
    hold.touch()
    sw = Sweep.make(engine, tmp_path, "intr", extra={"sleep": {"value": 0.2}, "hold": {"value": str(hold)}},
                    early_terminate=None, epochs=5)
    args = sw.run_args("--trials", "4", "--trainer", "contract_trainers:curve")
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=tmp_path, env=_env(sw.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob("hold.*")):
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before any trial started: exit {proc.returncode}"
        assert list(tmp_path.glob("hold.*")), "no trial started within 180 s"
        below = descendants(proc.pid)  # workers, agents, Ray's processes
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    finally:
        hold.unlink()
    first = Ran(tuple(args), proc.returncode, out, err)
    assert first.code == 130, first.describe()
    assert first.summary["interrupted"] is True, first.summary
    assert "Traceback" not in err, err
    assert below and _all_gone(below), f"processes of the sweep left after Ctrl-C: {_alive(below)}"
    _, parents, children = sw.mlflow()
    assert len(parents) == 1 and parents[0].info.status == "KILLED", [p.info.status for p in parents]
    parent_id = parents[0].info.run_id
    assert not [c for c in children if c.info.status == "RUNNING"]
    done_first = {c.info.run_id for c in children if c.data.tags.get("hpo.state") in ("complete", "pruned")}
    cut = [c for c in children if c.info.run_id not in done_first]
    assert cut and {c.data.tags.get("hpo.state") for c in cut} == {"interrupted"}, [c.data.tags for c in cut]
    assert {c.info.status for c in cut} == {"KILLED"}, [c.info.status for c in cut]
    trials = sw.study().get_trials()
    assert not running(trials), f"Optuna trials left RUNNING after Ctrl-C: {running(trials)}"
    cut_trials = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)]
    assert cut_trials and all(t.state == TrialState.FAIL and t.user_attrs.get("hpo.reason") == "interrupted"
                              for t in cut_trials), [(t.state, t.user_attrs.get("hpo.reason")) for t in cut_trials]

    again = sw.run("--trials", "4", "--trainer", "contract_trainers:curve")
    ok(again)
    s = again.summary
    assert s["complete"] + s["pruned"] + s["failed"] == 4, s
    assert s["parent_run_id"] == parent_id, "the resumed sweep reopens its parent run"
    _, parents, children = sw.mlflow()
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = [c for c in children if c.data.tags.get("hpo.state") in ("complete", "pruned")]
    per_point = Counter(c.data.params["x"] for c in finished)
    assert len(per_point) == 4 and set(per_point.values()) == {1}, f"each grid point finished once: {per_point}"
    assert done_first <= {c.info.run_id for c in finished}, "a trial finished before Ctrl-C was run again"
    trials = sw.study().get_trials()
    assert not running(trials), f"Optuna trials left RUNNING after the resume: {running(trials)}"
    kept = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs.get("hpo.mlflow_run_id") for t in kept) == sorted(c.info.run_id for c in finished)


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if pid_alive(pid)]


def _all_gone(pids: list[int], within: float = 30) -> bool:
    """Every pid gone (or a zombie nobody reaps yet) within `within` s: Ray's daemons take a moment."""
    deadline = time.monotonic() + within
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive(pids)


def test_a_sweep_whose_trials_all_fail_fails(engine, tmp_path):
    """Every trial raises: exit 1, the parent run FAILED, and stderr's last line says what went wrong."""
    sw = Sweep.make(engine, tmp_path, "broken")
    ran = sw.run("--trials", "2", "--trainer", "contract_trainers:raise_always")
    assert not ran.timed_out and ran.code == 1, ran.describe()
    last = one_line(ran.err)[-1] if one_line(ran.err) else ""
    assert last.startswith("hpo: no trial finished (2 failed") and "contract: this trainer always fails" in last, \
        f"last stderr line: {last!r}"
    _, parents, _ = sw.mlflow()
    assert len(parents) == 1 and parents[0].info.status == "FAILED", [p.info.status for p in parents]


# -- 10: the inspection commands ---------------------------------------------------------------
def test_status_and_best_agree_with_the_stores(finished):
    """`hpo status` counts what the Optuna study holds; `hpo best` names the study's best trial and value;
    Optuna's own API and optuna-dashboard read the study."""
    sw, ran = finished
    ok(ran)
    study = sw.study()
    assert_optuna_reads(study)
    states = _states(study.get_trials())
    best = sw.cli("best", str(sw.file))
    ok(best)
    data = json.loads(best.out)
    assert data["best_trial"] == study.best_trial.number, (data, study.best_trial.number)
    assert data["score"] == pytest.approx(study.best_value), data
    status = sw.cli("status", str(sw.file))
    ok(status)
    counts = {k: int(m[1]) for k in ("complete", "pruned", "failed")
              if (m := re.search(rf"(\d+) {k}", status.out))}
    assert counts == {"complete": states["COMPLETE"], "pruned": states["PRUNED"], "failed": 0}, status.out
    finished_of = re.search(r"(\d+)/(\d+) finished", status.out)
    assert finished_of and (int(finished_of[1]), int(finished_of[2])) == (BUDGET, BUDGET), status.out


# -- 11-15: engine-independent -----------------------------------------------------------------
def test_ray_rerun_into_a_new_storage_runs_or_refuses(tmp_path):
    """A finished Ray sweep run again under the same name with a new --storage and --tracking-uri must
    run its trials into the new stores, or refuse in one line (exit 2): never exit 0 having done nothing."""
    sw = Sweep.make("ray", tmp_path, "rayagain", early_terminate=None, epochs=2)
    ok(sw.run("--trials", "2", "--trainer", "contract_trainers:curve"))
    new = tmp_path / "elsewhere"
    new.mkdir()
    first = {p: p.stat().st_mtime_ns for p in sw.dir.rglob("*") if p.is_file() and ".alive" not in p.name}
    again = sw.run("--trials", "2", "--trainer", "contract_trainers:curve",
                   "--storage", str(new / "optuna.log"), "--tracking-uri", f"sqlite:///{new / 'mlflow.db'}")
    assert not again.timed_out, again.describe()
    if again.code == 2:
        assert len(one_line(again.err)) == 1 and "Traceback" not in again.err, again.describe()
        return
    ok(again)
    assert (new / "optuna.log").is_file(), f"exit 0 but nothing in the new storage\n{again.describe()}"
    assert (new / "report.html").is_file() and list((new / "ray").glob("tune-*")), "the sweep's folder is the storage's"
    after = {p: p.stat().st_mtime_ns for p in sw.dir.rglob("*") if p.is_file() and ".alive" not in p.name}
    assert after == first, "the second sweep wrote into the first one's folder"
    trials = load_study(new / "optuna.log", "rayagain").get_trials()
    assert len([t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]) == 2, _states(trials)


@pytest.fixture(scope="module")
def optuna_done(tmp_path_factory) -> tuple[Sweep, Ran]:
    """A small finished Optuna sweep (random x, no early termination) for the resume checks."""
    sw = Sweep.make("optuna", tmp_path_factory.mktemp("again"), "again", method="random",
                    x={"distribution": "uniform", "min": 0.0, "max": 1.0}, early_terminate=None, epochs=3)
    return sw, sw.run("--trials", "2", "--trainer", "contract_trainers:curve")


def test_changed_parameters_under_an_existing_study_are_refused(optuna_done):
    """The same study name with a different parameters block: exit 2, one line on stderr, no traceback,
    and the study untouched."""
    sw, ran = optuna_done
    ok(ran)
    before = len(sw.study().get_trials())
    space = sw.cwd / "other-space.yaml"
    space.write_text(yaml.safe_dump({"parameters": {"epochs": {"value": 3},
                                                    "x": {"distribution": "uniform", "min": 0.0, "max": 5.0}}}))
    changed = sw.run("--trials", "2", "--trainer", "contract_trainers:curve", "--space", str(space))
    assert not changed.timed_out and changed.code == 2, changed.describe()
    assert len(one_line(changed.err)) == 1 and "Traceback" not in changed.err, changed.describe()
    assert len(sw.study().get_trials()) == before


def test_resuming_a_finished_sweep_says_nothing_is_left(optuna_done):
    """The same finished command again: exit 0, stderr says there is nothing left to run, no trial added."""
    sw, ran = optuna_done
    ok(ran)
    before = len(sw.study().get_trials())
    again = sw.run("--trials", "2", "--trainer", "contract_trainers:curve")
    ok(again)
    assert "nothing" in again.err.lower(), again.describe()
    assert len(sw.study().get_trials()) == before


def test_a_trainer_function_that_does_not_exist_is_a_usage_error(tmp_path):
    """`--trainer module:missing` (the module exists): exit 2, one stderr line, and no runs/ folder."""
    sw = Sweep.make("optuna", tmp_path, "nope", early_terminate=None, epochs=1)
    ran = sw.run("--trials", "2", "--trainer", "contract_trainers:nope", timeout=120)
    assert not ran.timed_out and ran.code == 2, ran.describe()
    assert len(one_line(ran.err)) == 1 and "Traceback" not in ran.err, ran.describe()
    assert not (tmp_path / "runs").exists()


def test_explain_says_which_engines_can_run_the_sweep(tmp_path):
    """`hpo explain --json` says which engines can run a sweep: a choice between lists (Optuna holds it as
    JSON text) and a `normal` parameter (through W&B's inverse CDF) run everywhere."""
    sw = Sweep.make("optuna", tmp_path, "lists", method="random", extra={"shape": {"values": [[1, 2], [3]]}})
    data = explain_json(hpo("explain", str(sw.file), "--json", cwd=tmp_path, timeout=120))
    assert all(data[e]["runs"] and not data[e]["problem"] for e in ("optuna", "ray", "wandb")), data
    sw = Sweep.make("optuna", tmp_path, "normal", method="random",
                    extra={"noise": {"distribution": "normal", "mu": 0.0, "sigma": 1.0}})
    data = explain_json(hpo("explain", str(sw.file), "--json", cwd=tmp_path, timeout=120))
    assert all(data[e]["runs"] for e in ("optuna", "ray", "wandb")), data
