"""hpo's whole read of an RDB study (hpo.rdb_whole) against Optuna's own (`RDBStorage._get_trials`), on SQLite and
PostgreSQL: every kind of trial hpo leaves (test_report_read's), plus every kind of distribution, infinite and NaN
values, system attributes and attributes written twice; every way Optuna's cache and reads ask (all, by state, the
unfinished ids and everything newer). The same trials, field by field, params in the same order."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from hpo import rdb_whole, storage
from test_report_read import trials as every_kind


def norm(t) -> tuple:
    """A trial's fields, NaN-safe (nan != nan), attribute order aside (Optuna's ORM returns rows unordered)."""
    def same(d: dict) -> list:
        return sorted((str(k), repr(v)) for k, v in d.items())

    return (t.number, t._trial_id, t.state, repr(t.values), t.datetime_start, t.datetime_complete,  # noqa: SLF001
            [(k, repr(v)) for k, v in t.params.items()], same(t.distributions), same(t.user_attrs),
            same(t.system_attrs), same(t.intermediate_values))


def odd_ones() -> list:
    """What the report's study lacks: int, log, stepped and mixed categorical distributions, infinite and NaN
    values, system attributes (Optuna's `fixed_params` of an enqueued trial)."""
    dists = {"n": IntDistribution(1, 64, log=True), "lr": FloatDistribution(1e-5, 1.0, log=True),
             "q": FloatDistribution(0.0, 1.0, step=0.25), "c": CategoricalDistribution([None, True, 1.5, "a"])}
    out = []
    for i, c in enumerate([None, True, 1.5, "a"]):
        out.append(create_trial(state=TrialState.COMPLETE, values=[(math.inf, -math.inf, 0.0, 1e300)[i]],
                                params={"n": 2 ** i, "lr": 10.0 ** -i, "q": i / 4, "c": c}, distributions=dists,
                                intermediate_values={0: math.nan, 1: math.inf, 5: -1.5},
                                system_attrs={"fixed_params": {"c": c}, "completed_rung_0": 0.5},
                                user_attrs={"nested": {"a": [1, 2, {"b": None}]}, "text": "é ☃"}))
    return out


@pytest.fixture
def study(rdb_url):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="w", storage=rdb_url, direction="maximize")
    study.add_trials(every_kind(1) + odd_ones())
    rdb = study._storage._backend  # noqa: SLF001
    running = next(t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
    rdb.set_trial_user_attr(running._trial_id, "hpo.worker", "written twice")  # noqa: SLF001 - an update of a row
    yield study
    rdb.engine.dispose()


@pytest.mark.parametrize("batch", [rdb_whole.IN_BATCH, 7], ids=["one IN list", "IN lists of 7 ids"])
def test_hpos_whole_read_is_optunas_for_every_question_optunas_reads_ask(study, far_timezone, batch, monkeypatch):
    monkeypatch.setattr(rdb_whole, "IN_BATCH", batch)
    rdb, sid = study._storage._backend, study._study_id  # noqa: SLF001
    ids = [t._trial_id for t in study.get_trials(deepcopy=False)]  # noqa: SLF001
    mid = ids[len(ids) // 2]
    unfinished = {t._trial_id for t in study.get_trials(deepcopy=False)  # noqa: SLF001
                  if not t.state.is_finished()} | {ids[3], ids[40]}
    asks = [(None, set(), -1),  # a first read: everything
            (None, unfinished, mid),  # the cache's read: its unfinished trials and everything newer
            (None, {ids[0], ids[-1] + 100}, ids[-1]),  # an id above the bound is not read by id
            ((TrialState.COMPLETE,), set(), -1), ((TrialState.RUNNING, TrialState.WAITING), unfinished, ids[5]),
            (None, set(), ids[-1])]  # nothing new
    for states, included, above in asks:
        want = RDBStorage._get_trials(rdb, sid, states, set(included), above)  # noqa: SLF001 - Optuna's own
        got = rdb_whole.read_trials(rdb, sid, states, set(included), above)
        assert [norm(t) for t in got] == [norm(t) for t in want], (states, above)
    assert len(rdb_whole.read_trials(rdb, sid, None, set(), -1)) == len(ids) == 124
    with pytest.raises(KeyError):
        rdb_whole.read_trials(rdb, sid + 1000, None, set(), -1)


def test_hpos_storage_reads_whole_through_it(study, rdb_url, monkeypatch):
    """What hpo opens (storage.open_storage) reads the study without Optuna's ORM read."""
    def refused(*args, **kwargs):
        raise AssertionError("Optuna's ORM read")

    monkeypatch.setattr(RDBStorage, "_get_trials", refused)
    store = storage.open_storage(rdb_url)
    try:
        got = optuna.load_study(study_name="w", storage=store).get_trials(deepcopy=False)
    finally:
        store.engine.dispose()
    monkeypatch.undo()
    assert [norm(t) for t in got] == [norm(t) for t in study.get_trials(deepcopy=False)]
