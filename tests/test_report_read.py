"""`hpo report`'s lean read (hpo.report_read) against Optuna's whole read, on SQLite and PostgreSQL.

A real RDB study of every kind of trial hpo leaves (complete, pruned with an infinite report, failed by the
trainer, failed and retried, interrupted, running, waiting; parameters that vary, a constant; one and two
objectives). Every trial read lean must be its whole read in what the report shows of every trial, and the page
built from lean reads must be the page built from whole reads, with the caps lowered so that most trials are
not drawn and only the drawn ones are read whole. (The caps' real figure, 100,000 trials on PostgreSQL, is timed
in bench/bench_scale.py.)
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from hpo import htmlreport, keys, report_read, storage
from hpo import spec as specmod
from hpo.htmlreport import figure

N = 120
CAP = 20
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def trials(objectives: int) -> list:
    """N trials of every kind, with times, attributes and reports as hpo's workers write them; trial i is number i."""
    dists = {"x": FloatDistribution(0, 1), "opt": CategoricalDistribution(["adam", "sgd"]),
             "epochs": CategoricalDistribution([3])}
    t0 = datetime(2026, 12, 6, 12, 0, 0)
    out = []
    for i in range(N):
        x = ((i * 37) % N) / N
        kind = ("complete", "complete", "complete", "pruned", "failed", "failed", "retry")[i % 7]
        kind = {N - 4: "running", N - 3: "running", N - 2: "waiting", N - 1: "waiting"}.get(i, kind)
        attrs = {keys.WORKER: f"cpu{i % 3}", keys.MLFLOW_RUN_ID: f"run{i}", keys.TRAINER_SECONDS: 1.5}
        common = {"params": {"x": x, "opt": ("adam", "sgd")[i % 2], "epochs": 3}, "distributions": dists}
        if kind == "complete":
            values = [x, 1 - x][:objectives] if i != 51 else [2.0, 0.5][:objectives]
            t = create_trial(state=TrialState.COMPLETE, values=values, intermediate_values={1: x / 3, 2: x / 2, 3: x},
                             user_attrs=attrs, **common)
        elif kind == "pruned":
            t = create_trial(state=TrialState.PRUNED, intermediate_values={1: x / 3, 2: -math.inf},
                             user_attrs={**attrs, keys.REASON: "stopped at step 2"}, **common)
        elif kind in ("failed", "retry"):  # a trainer's error; every 7th re-runs the trial before it (--retries)
            reason = "interrupted" if kind == "retry" and i % 2 else "trainer error"
            t = create_trial(state=TrialState.FAIL, intermediate_values={1: x / 3},
                             user_attrs={**attrs, keys.REASON: reason, keys.ERROR: f"ValueError: trial {i}",
                                         **({keys.RETRY_OF: i - 1} if kind == "retry" else {})}, **common)
        elif kind == "running":
            t = create_trial(state=TrialState.RUNNING, intermediate_values={1: x / 3}, user_attrs=attrs, **common)
        else:
            t = create_trial(state=TrialState.WAITING)
        if kind != "waiting":
            t.datetime_start = t0 + timedelta(seconds=i)
            t.datetime_complete = None if kind == "running" else t0 + timedelta(seconds=i + 5 + i % 7)
        out.append(t)
    return out


@pytest.fixture(params=[1, 2], ids=["one objective", "two objectives"])
def study(request, rdb_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="r", storage=rdb_url, directions=["maximize", "minimize"][:request.param])
    study.add_trials(trials(request.param))
    yield study
    study._storage._backend.engine.dispose()  # noqa: SLF001 - its connections, before the next test's database


def spec_of(study: optuna.Study) -> specmod.Spec:
    metric = ({"metric": {"name": "score", "goal": "maximize"}} if len(study.directions) == 1 else
              {"metrics": [{"name": "score", "goal": "maximize"}, {"name": "loss", "goal": "minimize"}]})
    return specmod.from_dict({"name": "r", "method": "random", **metric,
                              "parameters": {"x": {"min": 0.0, "max": 1.0}, "opt": {"values": ["adam", "sgd"]},
                                             "epochs": {"value": 3}}})


def test_every_trial_read_lean_is_its_whole_read_in_what_the_report_shows_of_every_trial(study, far_timezone):
    lean = report_read.Trials(study).all
    whole = study.get_trials(deepcopy=False)
    assert len(lean) == len(whole) == N
    assert {t.state for t in lean} == {*FINISHED, TrialState.RUNNING, TrialState.WAITING}
    for got, want in zip(lean, whole):
        what = (want.number, want.state)
        assert (got.number, got.state, got._trial_id) == (want.number, want.state, want._trial_id), what  # noqa: SLF001
        assert got.values == want.values, what
        assert (got.datetime_start, got.datetime_complete) == (want.datetime_start, want.datetime_complete), what
        last = max(want.intermediate_values, default=None)
        assert got.intermediate_values == ({last: want.intermediate_values[last]} if last is not None else {}), what
        assert got.user_attrs == {k: v for k, v in want.user_attrs.items() if k in report_read.LEAN_ATTRS}, what
        assert got.params == {} and got.system_attrs == {}, "a lean trial carries no params"
    assert any(keys.RETRY_OF in t.user_attrs for t in lean) and any(math.isinf(htmlreport._last(t) or 0) for t in lean)


def written(page: str) -> str:
    return re.sub(r"written\n\d{4}-\d\d-\d\d \d\d:\d\d", "written", page)


def test_the_page_from_lean_reads_is_the_page_from_whole_reads_and_reads_only_the_drawn_whole(study, monkeypatch):
    monkeypatch.setattr(htmlreport, "CAP", CAP)
    monkeypatch.setattr(htmlreport, "TIMELINE_CAP", 30)
    spec = spec_of(study)
    lean, whole = report_read.Trials(study), report_read.Trials(study, lean=False)
    page = htmlreport.build(study, spec, [1, 2], lean)
    assert written(page) == written(htmlreport.build(study, spec, [1, 2], whole))
    assert 0 < lean.asked_whole <= 2 * CAP + 10, "only what is drawn is read whole"
    assert f"{CAP} of {N} trials drawn" in page and "retried" in page
    # what the lean read must have carried for that page: the counts (reasons, retries) and the failures table
    everything = study.get_trials(deepcopy=False)
    c = storage.count(everything)
    assert c.retried and c.interrupted and c.failed, c  # a lean read without the reasons or retries counts otherwise
    assert f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed, {c.retried} retried, {c.interrupted} " \
           "interrupted" in page.replace("\n", " ")
    assert page.count("ValueError: trial") == sum(t.state == TrialState.FAIL for t in everything)
    if len(study.directions) == 2:  # the Pareto front names the trials by their own numbers
        names = {int(n) for tr in figure(page, "pareto")["data"] for txt in tr.get("text") or []
                 for n in re.findall(r"number.{0,6}?(\d+)", txt)}
        assert 51 in names and names <= {t.number for t in study.get_trials() if t.state == TrialState.COMPLETE}
