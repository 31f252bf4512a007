"""The port (hpo.backends.port): engines reach the Session only through it, and its lifecycle rules hold.

The rules run in-process against `Scripted`, a fourth engine of a few lines that plays a script of trial
events through the port, with a real Optuna journal and a real MLflow store in a temp folder: each rule in
well under a second, where the contract suite needs real workers. The static check reads every engine's
source: a member of the Session that is not on the port, or a run closed or a budget counted by an
engine's controller, turns it red.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from optuna.trial import TrialState

from conftest import load_study, runs_of, write
from hpo import api
from hpo.backends.port import MEMBERS
from hpo.session import Session
from hpo.trial import Outcome, State

BACKENDS = Path(__file__).parent.parent / "hpo" / "backends"
ROOT = Path(__file__).parent.parent
# What only the Session may do: close runs, count the budget, write a trial's end into the study.
SESSION_ONLY = {"close_child", "end_child", "set_terminated", "fill_queue", "queue_retries", "fail_trial",
                "finish_trial", "start_parent", "finish_parent"}


def _engine_sources() -> list[Path]:
    """The engines' controller side (their workers and agents run trials in processes of their own)."""
    return [p for p in BACKENDS.rglob("*.py")
            if p.name in ("__init__.py", "controller.py") and p.parent != BACKENDS] + [
        Path(__file__).parent / "engines" / "random_engine.py"]  # the fourth engine, from outside hpo


def test_engines_use_only_the_port():
    used: dict[str, set[str]] = {}
    for path in _engine_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = node.value
                name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
                if name in ("port", "session"):
                    used.setdefault(node.attr, set()).add(path.name)
            if isinstance(node, ast.ImportFrom) and node.module == "hpo.session":
                pytest.fail(f"{path}: imports hpo.session; engines hold a SessionPort")
    assert used, "the check found the engines' use of the port"
    beyond = {m: where for m, where in used.items() if m not in MEMBERS}
    assert not beyond, f"engines reach past the port: {beyond}"


def test_no_engine_closes_a_run_or_counts_the_budget():
    for path in _engine_sources():
        calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}
        assert not calls & SESSION_ONLY, f"{path} calls {sorted(calls & SESSION_ONLY)}"


# -- a fourth engine, in-process ---------------------------------------------------------------
class Scripted:
    """An engine that plays `script(port)` as its run: the whole of a new engine, through the port only."""

    name = "scripted"
    mirrored = True

    def __init__(self, script: Callable[[Any], None]):
        self.script = script

    def check(self, plan):
        return []

    def schedule(self, spec, options=None):
        from hpo.backends.base import Schedule

        return Schedule(self.name)

    def begin(self, plan):
        return plan

    def prestart(self, plan, port):
        return None

    def run(self, plan, port, early=None):
        self.script(port)


def child(port, number: int) -> str:
    """A trial's child run, made as a worker makes it (its own Tracker, the parent the port names)."""
    from hpo.tracking import Tracker

    tracker = Tracker(port.study.user_attrs["hpo.tracking_uri"])
    return tracker.start_child(port.parent.experiment_id, port.parent.run_id, f"trial-{number}", {"x": number},
                               {"hpo.trial": str(number)})


def play(tmp_path: Path, script: Callable[[Any], None], trials: int = 3):
    sweep = write(tmp_path / "sweep.yaml", """
        name: port
        method: random
        metric: {name: score, goal: maximize}
        parameters:
          x: {values: [1, 2, 3, 4, 5, 6, 7, 8]}
    """)
    plan = api.prepare(api.Settings(sweep, trials=trials, workers=1, root=tmp_path / "runs", progress=False,
                                    trainer="fault_trainers:trivial", options={"no_report": True}))
    plan = replace(plan, backend="scripted")
    session = Session(plan, Scripted(script))
    try:
        result = session.run()
    except Exception as exc:  # noqa: BLE001 - an aborted sweep raises after closing: the test reads what is left
        result = exc
    sweep_dir = tmp_path / "runs" / "port"
    return result, load_study(sweep_dir, "port").get_trials(), runs_of(sweep_dir, "port")


def run_one(port, number: int, reports: list[tuple[int, float]], outcome: Outcome | None = None, key=None):
    key = number if key is None else key
    port.trial_started(key, number, {"x": number}, worker="w0")
    port.trial_updated(key, run_id=child(port, number))
    for step, value in reports:
        port.trial_reported(key, step, value)
    port.trial_finished(key, outcome or Outcome(State.COMPLETE), close=True)


def test_the_value_is_the_report_at_the_highest_step(tmp_path):
    def script(port):
        n = 0
        while port.remaining():
            run_one(port, n, [(1, 0.1), (3, 0.3), (2, 0.2)])
            n += 1

    result, trials, (_, _, parents, children) = play(tmp_path, script)
    assert [t.value for t in trials] == [0.3, 0.3, 0.3]
    assert result.exit_code == 0 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3


def test_the_budget_is_counted_once_and_a_lost_trial_is_run_again(tmp_path):
    def script(port):
        n = 0
        while port.remaining():
            if n == 1:
                port.trial_started("lost", n, {"x": n}, worker="w0")
                port.trial_updated("lost", run_id=child(port, n))
                port.trial_lost("lost", "worker died", "killed by the test")
            else:
                run_one(port, n, [(1, float(n))])
            n += 1

    result, trials, (_, _, _, children) = play(tmp_path, script)
    states = [(t.state, t.user_attrs.get("hpo.reason")) for t in trials]
    assert states.count((TrialState.COMPLETE, None)) == 3, "three counted: the lost one did not use the budget"
    assert (TrialState.FAIL, "worker died") in states and len(trials) == 4
    lost = next(c for c in children if c.data.tags.get("hpo.reason") == "worker died")
    assert lost.info.status == "FAILED" and result.counts.retried == 1


def test_a_new_run_for_a_running_trial_ends_the_last_one_paused(tmp_path):
    def script(port):
        n = 0
        while port.remaining():
            port.trial_started(n, n, {"x": n})
            first = child(port, n)
            port.trial_updated(n, run_id=first)
            port.trial_reported(n, 1, 0.9)
            port.trial_updated(n, run_id=child(port, n))  # Ray's HyperBand started it again from step 1
            port.trial_reported(n, 1, 0.4)
            port.trial_finished(n, Outcome(State.COMPLETE), close=True)
            n += 1

    _, trials, (_, _, _, children) = play(tmp_path, script, trials=1)
    assert trials[0].value == 0.4, "the value is the current run's, not the paused one's"
    statuses = sorted((c.info.status, c.data.tags.get("hpo.reason", "")) for c in children)
    assert statuses == [("FINISHED", ""), ("KILLED", "paused")]


def test_workers_that_keep_dying_stop_the_sweep(tmp_path):
    deaths = []

    def script(port):
        while not port.aborting:
            deaths.append(1)
            port.worker_exited("worker died (exit code 1) on w0", "", pool=1)

    result, trials, (_, _, parents, _) = play(tmp_path, script)
    assert len(deaths) == 5, "max(5, 2 x pool) deaths in a row with nothing counted"
    assert "workers keep dying" in str(result) and parents[0].info.status == "FAILED"
    assert not trials


def test_a_crash_loop_counts_from_the_last_counted_trial(tmp_path):
    def script(port):
        for _ in range(4):
            port.worker_exited("worker died", "", pool=1)
        run_one(port, 0, [(1, 1.0)])  # progress: the count of deaths in a row starts again
        for _ in range(4):
            port.worker_exited("worker died", "", pool=1)
        n = 1
        while port.remaining():
            run_one(port, n, [(1, 1.0)])
            n += 1

    result, trials, _ = play(tmp_path, script)
    assert result.exit_code == 0 and not result.aborted and len(trials) == 3


def test_ctrl_c_ends_running_trials_interrupted_and_the_parent_killed(tmp_path):
    def script(port):
        run_one(port, 0, [(1, 1.0)])
        port.trial_started(1, 1, {"x": 1})
        port.trial_updated(1, run_id=child(port, 1))
        raise KeyboardInterrupt

    result, trials, (_, _, parents, children) = play(tmp_path, script)
    assert result.exit_code == 130 and parents[0].info.status == "KILLED"
    assert [(t.state, t.user_attrs.get("hpo.reason")) for t in trials] == [
        (TrialState.COMPLETE, None), (TrialState.FAIL, "interrupted")]
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"]
    assert not [c for c in children if c.info.status == "RUNNING"]


def test_a_config_that_kills_its_worker_twice_is_failed_for_good(tmp_path):
    """The first death is the machine's (re-run, not counted); the second of the same config is the config's:
    counted, named, and not infra, so no engine proposes it again. Another config's death starts afresh."""
    said = []

    def script(port):
        for key in ("a", "b"):
            port.trial_started(key, 0, {"x": 7}, worker="w0")
            said.append(port.trial_lost(key, "worker died", "worker died (signal SIGKILL) on w0"))
        port.trial_started("c", 1, {"x": 8}, worker="w0")
        said.append(port.trial_lost("c", "worker died", "worker died (signal SIGKILL) on w0"))
        n = 2
        while port.remaining():
            run_one(port, n, [(1, 1.0)])
            n += 1

    result, trials, _ = play(tmp_path, script)
    assert [o.infra for o in said] == [True, False, True]
    assert said[1].reason == "kills its worker"
    assert said[1].error.startswith("worker died (SIGKILL) ×2 — out of memory?"), said[1].error
    assert result.exit_code == 0 and result.counts.finished == 3, "the failed-for-good config used the budget"
    assert [t.user_attrs.get("hpo.reason") for t in trials[:3]] == ["worker died", "kills its worker", "worker died"]


def test_a_repeated_step_replaces_the_earlier_report(tmp_path):
    def script(port):
        n = 0
        while port.remaining():
            run_one(port, n, [(1, 0.9), (2, 0.5), (2, 0.7)])
            n += 1

    _, trials, _ = play(tmp_path, script, trials=1)
    assert trials[0].value == 0.7 and trials[0].intermediate_values == {1: 0.9, 2: 0.7}


def test_the_private_names_hpo_uses_still_exist():
    """Names of Optuna's and MLflow's internals hpo calls or patches: an upgrade that renames one turns this red
    (rather than the sweep that first needs it)."""
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages._cached_storage import _CachedStorage

    from hpo.storage_outage import RDB_CALLS

    missing = [n for n in RDB_CALLS if not hasattr(RDBStorage, n) and not hasattr(_CachedStorage, n)]
    assert not missing, f"RDBStorage no longer has {missing} (hpo.storage_outage patches them)"
    study = optuna.create_study()
    trial = study.ask()
    for obj, names in ((study, ("_storage", "_study_id")),
                       (trial, ("_trial_id", "_cached_frozen_trial", "storage", "study"))):
        assert all(hasattr(obj, n) for n in names), [n for n in names if not hasattr(obj, n)]
    assert isinstance(trial._cached_frozen_trial.intermediate_values, dict)  # noqa: SLF001 - the worker replaces a repeated step there
    from optuna.storages._rdb.models import TrialHeartbeatModel  # hpo.storage.heartbeats reads it

    assert TrialHeartbeatModel.__tablename__ == "trial_heartbeats"
    assert {"trial_id", "heartbeat"} <= set(TrialHeartbeatModel.__table__.columns.keys())
    cached = optuna.create_study(storage="sqlite:///:memory:")._storage  # noqa: SLF001
    assert isinstance(cached, _CachedStorage) and isinstance(cached._backend, RDBStorage)  # noqa: SLF001
    assert hasattr(cached._backend, "engine")  # noqa: SLF001
    # hpo.rdb_reads: the cache's own bookkeeping, which IncrementalCache keeps as Optuna's read does
    from optuna.storages._cached_storage import _StudyInfo
    from optuna.storages._rdb.models import TrialModel

    info = _StudyInfo()
    assert {"trials", "unfinished_trial_ids", "last_finished_trial_id"} <= set(vars(info)), vars(info)
    for name in ("_read_trials_from_remote_storage", "_add_trials_to_cache"):
        assert callable(getattr(_CachedStorage, name, None)), name
    assert {"_studies", "_trial_id_to_study_id_and_number", "_lock"} <= set(vars(cached)), vars(cached)
    assert callable(getattr(RDBStorage, "_get_trials", None)) and hasattr(cached._backend, "scoped_session")  # noqa: SLF001
    assert {"trial_id", "study_id", "state"} <= set(TrialModel.__table__.columns.keys())
    # hpo.report_read: the columns of a lean read, and Optuna's conversions of what it stores
    from optuna.storages._rdb import models

    assert hasattr(TrialModel, "_datetime_start_utc") and hasattr(TrialModel, "_datetime_complete_utc")
    for model, columns in ((models.TrialValueModel, {"trial_id", "objective", "value", "value_type"}),
                           (models.TrialIntermediateValueModel, {"trial_id", "step", "intermediate_value",
                                                                 "intermediate_value_type"}),
                           (models.TrialUserAttributeModel, {"trial_id", "key", "value_json"})):
        assert columns <= set(model.__table__.columns.keys()), model
    assert callable(models.TrialValueModel.stored_repr_to_value)
    assert callable(models.TrialIntermediateValueModel.stored_repr_to_intermediate_value)


def test_every_hpo_tag_and_attribute_name_is_declared_once_in_keys():
    """No `"hpo.…"` string outside hpo/keys.py but module names: a tag is found by its constant."""
    import ast

    from hpo import keys

    tags = {v for v in vars(keys).values() if isinstance(v, str)}
    modules = {".".join(("hpo", *p.relative_to(ROOT / "hpo").with_suffix("").parts)).removesuffix(".__init__")
               for p in (ROOT / "hpo").rglob("*.py")} - tags  # a module's name, unless a tag has it too
    modules |= {"hpo.train:train"}
    found = []
    for path in sorted((ROOT / "hpo").rglob("*.py")):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("hpo.") \
                    and node.value not in modules and " " not in node.value and "\n" not in node.value:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_no_import_cycle_between_hpo_modules():
    """Every import of an hpo module, function-level and TYPE_CHECKING ones included: no module reaches itself
    (value types live in the leaf hpo.plan, masking in hpo.redact, W&B -> Optuna distributions in
    hpo.distributions, so no core module imports an engine's package)."""
    import ast

    mods = {}
    for path in (ROOT / "hpo").rglob("*.py"):
        if "_hook" not in path.parts:
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("hpo"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("hpo")]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t not in (name, "hpo"):
                    graph[name].add(t)

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    cycles = sorted(m for m in mods if m in reaches(m))
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_a_trial_that_ended_before_the_interrupt_keeps_its_end_on_its_run(tmp_path):
    """The race CI found on Ray: a trial reaches max_t and is COMPLETE in the study, Ctrl-C kills its worker before
    the worker closed its own child run. The sweep's close ends that child as its trial ended (FINISHED,
    complete), not `interrupted`; a child whose trial was still running ends interrupted."""
    def script(port):
        port.trial_started("done", 0, {"x": 1}, worker="w0")
        port.trial_updated("done", run_id=child(port, 0))
        port.trial_reported("done", 1, 0.5)
        port.trial_finished("done", Outcome(State.COMPLETE), close=False)  # the worker was to close the run
        port.trial_started("live", 1, {"x": 2}, worker="w1")
        port.trial_updated("live", run_id=child(port, 1))
        raise KeyboardInterrupt

    result, trials, (_, _, parents, children) = play(tmp_path, script)
    assert result.interrupted and parents[0].info.status == "KILLED"
    ends = {c.data.tags["hpo.trial"]: (c.info.status, c.data.tags.get("hpo.state")) for c in children}
    assert ends == {"0": ("FINISHED", "complete"), "1": ("KILLED", "interrupted")}, ends
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]


def test_a_run_whose_worker_died_before_writing_its_params_gets_them_when_its_trial_is_failed(tmp_path):
    """The window `make test` found under load: a worker killed after MLflow made its trial's child run but before
    the run's params were written and the run named in the trial. The trial is failed as an orphan; its run, found by
    its `hpo.trial` tag, ends FAILED with the trial's params, as every other run has them."""
    import socket

    from optuna.distributions import CategoricalDistribution

    from hpo import keys
    from hpo.tracking import PARENT_TAG, Tracker

    def script(port):
        trial = port.study.ask({"x": CategoricalDistribution([1, 2, 3, 4, 5, 6, 7, 8])})
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        for key, value in ((keys.TRIAL, str(trial.number)), (keys.HOST, socket.gethostname()), (keys.PID, dead.pid)):
            trial.set_user_attr(key, value)
        tracker = Tracker(port.study.user_attrs["hpo.tracking_uri"])
        tracker.client.create_run(port.parent.experiment_id, run_name="trial-0",
                                  tags={PARENT_TAG: port.parent.run_id, keys.TRIAL: str(trial.number)})
        assert port.fail_orphans("worker died", "killed by the test") == 1
        while port.remaining():
            run_one(port, 1, [(1, 1.0)])

    result, trials, (_, _, _, children) = play(tmp_path, script, trials=1)
    assert not isinstance(result, Exception), result
    lost = next(c for c in children if c.data.tags.get("hpo.trial") == "0")
    assert lost.info.status == "FAILED" and lost.data.params == {"x": str(trials[0].params["x"])}, lost
    assert trials[0].user_attrs["hpo.mlflow_run_id"] == lost.info.run_id


ENGINES_DIR = Path(__file__).parent / "engines"
RANDOM_SWEEP = """
name: plug
method: random
metric: {name: score, goal: maximize}
parameters:
  x: {distribution: uniform, min: 0.0, max: 1.0}
"""


def test_an_engine_from_another_package_registers_by_entry_point_and_runs_a_sweep(tmp_path):
    """A fourth engine from outside hpo (tests/engines: a module and its dist-info's `hpo.backends` entry point)
    is taken by `--backend`, listed by `hpo explain`, and its sweep is recorded as every engine's is: the budget
    of trials in the study, one FINISHED child per trial with the trial's value, the parent FINISHED."""
    import os

    from conftest import run_hpo

    sweep = write(tmp_path / "s.yaml", RANDOM_SWEEP)
    tests = str(Path(__file__).parent)
    env = {"PYTHONPATH": os.pathsep.join([str(ENGINES_DIR), tests, os.environ.get("PYTHONPATH", "")])}
    explained = run_hpo("explain", str(sweep), cwd=tmp_path, env=env, check=True)
    assert "Random  no early stopping" in explained.stdout, explained.stdout
    typo = run_hpo("run", str(sweep), "--backend", "randm", cwd=tmp_path, env=env)
    assert typo.returncode == 2 and "--backend: invalid choice: 'randm'" in typo.stderr and "'random'" in typo.stderr
    assert not (tmp_path / "runs").exists(), "a refused --backend writes nothing"
    ran = run_hpo("run", str(sweep), "--backend", "random", "--trials", "3", "--trainer", "fault_trainers:trivial",
                  "--no-progress", cwd=tmp_path, env=env, check=True)
    assert '"complete": 3' in ran.stdout, ran.stdout
    study = load_study(tmp_path / "runs" / "plug", "plug")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert {t.user_attrs["hpo.backend"] for t in trials} == {"random"}
    assert len({t.params["x"] for t in trials}) == 3, "RandomSampler proposed three points"
    _, _, parents, children = runs_of(tmp_path / "runs" / "plug", "plug")
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].data.tags["hpo.backend"] == "random"
    by_run = {c.info.run_id: c for c in children}
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for t in trials:
        child = by_run[t.user_attrs["hpo.mlflow_run_id"]]
        assert child.data.metrics["score"] == pytest.approx(t.value) == pytest.approx(t.params["x"])
