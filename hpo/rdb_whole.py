"""Optuna's read of an RDB study's trials, whole, without its ORM: the same FrozenTrials, several times faster.

`RDBStorage._get_trials` (what Optuna's cache, `get_all_trials` and so every whole read of an RDB study call) loads
each trial and each of its params, values, attributes and reports as SQLAlchemy ORM objects, then builds the
FrozenTrials from them: at 100,000 trials on PostgreSQL, 1.5 M objects and ~38 s. That is a controller's start-up,
a joining worker's first read (Optuna's pruners and TPE read the study), a resume, and `hpo status` before the
controller wrote `status.json` (bench/RESULTS.md, "At scale"). `read_trials` asks the same rows as plain tuples (one
query per table, each restricted to the trials asked for) and builds the FrozenTrials Optuna builds, with
each distinct distribution parsed once. hpo's RDBStorage (`storage_outage.PatientRDBStorage`) reads through it;
tests/test_rdb_whole.py compares it with Optuna's own on every kind of trial, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sqlalchemy_exc

IN_BATCH = 500  # trial ids in one IN list of a child table's read (SQLAlchemy's selectinload takes 500)


@contextmanager
def reading(rdb: RDBStorage) -> Iterator[Any]:
    """A session for reads: nothing to commit, and closed (its connection back to the pool) whatever happens."""
    session = rdb.scoped_session()
    try:
        yield session
    finally:
        session.close()


def trial_rows(session: Any, where: list[Any]) -> list[Any]:
    """(trial_id, number, state, start, end) of the trials `where` selects, in id order: what `build` takes."""
    t = models.TrialModel
    return session.execute(sqlalchemy.select(t.trial_id, t.number, t.state, t._datetime_start_utc,  # noqa: SLF001
                                             t._datetime_complete_utc).where(*where)  # noqa: SLF001
                           .order_by(t.trial_id)).all()


def read_trials(rdb: RDBStorage, study_id: int, states: Container[TrialState] | None, included_trial_ids: set[int],
                trial_id_greater_than: int) -> list[FrozenTrial]:
    """What `RDBStorage._get_trials` returns, with the same arguments: the study's trials in `states` (all when
    None) among `included_trial_ids` (those up to `trial_id_greater_than`) and every one above
    `trial_id_greater_than` (every trial when it is -1), in id order."""
    t = models.TrialModel
    included = {i for i in included_trial_ids if i <= trial_id_greater_than}
    mine = [t.study_id == study_id]
    if states is not None:
        assert isinstance(states, Iterable)
        mine.append(t.state.in_(list(states)))
    if included and trial_id_greater_than > -1:
        picked = [*mine, sqlalchemy.or_(t.trial_id.in_(included), t.trial_id > trial_id_greater_than)]
    elif trial_id_greater_than > -1:
        picked = [*mine, t.trial_id > trial_id_greater_than]
    else:
        picked = mine
    with reading(rdb) as session:
        if session.execute(sqlalchemy.select(models.StudyModel.study_id)
                           .where(models.StudyModel.study_id == study_id)).first() is None:
            raise KeyError(f"No study with study_id {study_id} exists.")  # as StudyModel.find_or_raise_by_id
        try:
            rows = _rows(session, picked, whole=picked is mine)
        except sqlalchemy_exc.OperationalError:  # an IN list past the database's limit: as Optuna, read all, filter
            session.rollback()
            rows = _rows(session, mine, whole=True)
            keep = {tid for tid, *_ in rows[0] if tid in included or tid > trial_id_greater_than}
            rows = tuple([r for r in table if r[0] in keep] for table in rows)
    return build(*rows)


def _rows(session: Any, where: list[Any], whole: bool) -> tuple[list[Any], ...]:
    """The trials' rows and their child tables' rows. A read of the whole study joins each child table with the
    study's trials; a read of some trials (a cache's: the unfinished and the new) asks each child table for their
    ids, `IN_BATCH` at a time, as Optuna's `selectinload` does: index lookups however stale the statistics."""
    t = models.TrialModel
    trials = trial_rows(session, where)
    ids = [row[0] for row in trials]

    def child(model: Any, *columns: Any) -> list[Any]:
        query = sqlalchemy.select(model.trial_id, *columns)
        if whole:
            return session.execute(query.join(t, t.trial_id == model.trial_id).where(*where)
                                   .order_by(columns[0])).all()
        return [row for at in range(0, len(ids), IN_BATCH) for row in session.execute(
            query.where(model.trial_id.in_(ids[at:at + IN_BATCH])).order_by(columns[0])).all()]

    p, v, u, s, iv = (models.TrialParamModel, models.TrialValueModel, models.TrialUserAttributeModel,
                      models.TrialSystemAttributeModel, models.TrialIntermediateValueModel)
    return (trials,
            child(p, p.param_id, p.param_name, p.param_value, p.distribution_json),
            child(v, v.trial_value_id, v.objective, v.value, v.value_type),
            child(u, u.trial_user_attribute_id, u.key, u.value_json),
            child(s, s.trial_system_attribute_id, s.key, s.value_json),
            child(iv, iv.trial_intermediate_value_id, iv.step, iv.intermediate_value, iv.intermediate_value_type))


def build(trials: list[Any], params: list[Any], values: list[Any], user: list[Any], system: list[Any],
          reports: list[Any]) -> list[FrozenTrial]:
    """FrozenTrials as `RDBStorage._build_frozen_trial_from_trial_model` builds them from the same rows (each child
    row: trial_id, its own id, then its columns; a table left empty leaves that part of every trial empty)."""
    dists: dict[str, distributions.BaseDistribution] = {}
    ps: dict[int, dict[str, Any]] = {}
    ds: dict[int, dict[str, distributions.BaseDistribution]] = {}
    for tid, _, name, value, dist_json in params:  # in param_id order, as Optuna sorts them
        dist = dists.get(dist_json)
        if dist is None:
            dist = dists[dist_json] = distributions.json_to_distribution(dist_json)
        ps.setdefault(tid, {})[name] = dist.to_external_repr(value)
        ds.setdefault(tid, {})[name] = dist
    vs: dict[int, dict[int, float]] = {}
    for tid, _, objective, value, kind in values:
        vs.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
    us: dict[int, dict[str, Any]] = {}
    for tid, _, key, value_json in user:
        us.setdefault(tid, {})[key] = json.loads(value_json)
    ss: dict[int, dict[str, Any]] = {}
    for tid, _, key, value_json in system:
        ss.setdefault(tid, {})[key] = json.loads(value_json)
    ivs: dict[int, dict[int, float]] = {}
    for tid, _, step, value, kind in reports:
        ivs.setdefault(tid, {})[step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
    return [FrozenTrial(number=number, state=state, value=None,
                        values=[objectives.get(i, 0) for i in range(len(objectives))]
                        if (objectives := vs.get(tid)) else None,
                        datetime_start=local(start), datetime_complete=local(end), params=ps.get(tid, {}),
                        distributions=ds.get(tid, {}), user_attrs=us.get(tid, {}), system_attrs=ss.get(tid, {}),
                        intermediate_values=ivs.get(tid, {}), trial_id=tid)
            for tid, number, state, start, end in trials]


def local(at: datetime | None) -> datetime | None:
    """Optuna's RDB keeps naive UTC and gives naive local time (models.TrialModel.datetime_start)."""
    return None if at is None else at.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
