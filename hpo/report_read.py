"""What `hpo report` reads of a study: every trial lean, and whole only the trials it draws.

The report's history, counts, timeline and failures need of every trial only its number, state, values, times,
last report and the attributes in `LEAN_ATTRS`; its curves, parallel coordinates, importances and top table need
the params and every report of at most a few thousand trials (htmlreport.CAP). Optuna's reads take every trial
whole: at 100,000 trials on PostgreSQL, 1.5 M rows and ~38 s of building FrozenTrials (bench/RESULTS.md).

`Trials(study).all` is every trial; `Trials.whole(trials)` the same trials with everything. On an RDB storage
`all` asks the database for only those columns (a lean FrozenTrial: no params, its last report only, the
`LEAN_ATTRS` user attributes, no system attributes) and `whole` reads the trials asked for by id, through Optuna's
own read. On any other storage (a journal is replayed whole either way) both are the study's own trials.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

from hpo import keys
from hpo.rdb_whole import local
from hpo.storage_outage import retry

LEAN_ATTRS = (keys.WORKER, keys.REASON, keys.ERROR, keys.RETRY_OF)  # what the report shows of every trial


def rdb_of(study: optuna.Study) -> RDBStorage | None:
    """The RDBStorage under a study's cache, or None for any other storage."""
    backend = getattr(study._storage, "_backend", study._storage)  # noqa: SLF001 - Optuna's _CachedStorage
    return backend if isinstance(backend, RDBStorage) else None


class Trials:
    """A study's trials for a report: `all` lean on an RDB storage, `whole(...)` of the few it draws (module doc)."""

    def __init__(self, study: optuna.Study, lean: bool = True) -> None:
        self._study = study
        self._rdb = rdb_of(study) if lean else None
        self._whole: dict[int, FrozenTrial] = {}  # number -> the trial read whole
        self.asked_whole = 0  # trials read whole (tests/test_report_read.py)
        self.all = self._lean() if self._rdb is not None else study.get_trials(deepcopy=False)

    def whole(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """These trials with their params, every report and every attribute, in the same order."""
        if self._rdb is None:
            return trials
        ids = {t._trial_id for t in trials if t.number not in self._whole}  # noqa: SLF001
        if ids:
            sid = self._study._study_id  # noqa: SLF001
            read = retry(lambda: self._rdb._get_trials(sid, None, ids, max(ids)),  # noqa: SLF001
                         getattr(self._rdb, "hpo_label", "--storage"))
            self.asked_whole += len(ids)
            self._whole.update((t.number, t) for t in read)
        return [self._whole.get(t.number, t) for t in trials]  # a trial deleted meanwhile: as it was read

    def _lean(self) -> list[FrozenTrial]:
        return retry(self._read_lean, getattr(self._rdb, "hpo_label", "--storage"))

    def _read_lean(self) -> list[FrozenTrial]:
        t, v, iv, ua = (models.TrialModel, models.TrialValueModel, models.TrialIntermediateValueModel,
                        models.TrialUserAttributeModel)
        sid = self._study._study_id  # noqa: SLF001
        mine = t.study_id == sid
        last = (sqlalchemy.select(iv.trial_id, sqlalchemy.func.max(iv.step).label("step"))
                .join(t, t.trial_id == iv.trial_id).where(mine).group_by(iv.trial_id).subquery())
        session = self._rdb.scoped_session()
        try:
            rows = session.execute(sqlalchemy.select(t.trial_id, t.number, t.state, t._datetime_start_utc,  # noqa: SLF001
                                                     t._datetime_complete_utc)  # noqa: SLF001
                                   .where(mine).order_by(t.trial_id)).all()
            values = session.execute(sqlalchemy.select(v.trial_id, v.objective, v.value, v.value_type)
                                     .join(t, t.trial_id == v.trial_id).where(mine)).all()
            reports = session.execute(sqlalchemy.select(iv.trial_id, iv.step, iv.intermediate_value,
                                                        iv.intermediate_value_type)
                                      .join(last, sqlalchemy.and_(iv.trial_id == last.c.trial_id,
                                                                  iv.step == last.c.step))).all()
            attrs = session.execute(sqlalchemy.select(ua.trial_id, ua.key, ua.value_json)
                                    .join(t, t.trial_id == ua.trial_id)
                                    .where(mine, ua.key.in_(LEAN_ATTRS))).all()
        finally:
            session.close()  # a read: nothing to commit
        vals: dict[int, dict[int, float]] = {}
        for tid, objective, value, kind in values:
            vals.setdefault(tid, {})[objective] = v.stored_repr_to_value(value, kind)
        last_report = {tid: {step: iv.stored_repr_to_intermediate_value(value, kind)}
                       for tid, step, value, kind in reports}
        user: dict[int, dict[str, Any]] = {}
        for tid, key, value_json in attrs:
            user.setdefault(tid, {})[key] = json.loads(value_json)
        return [FrozenTrial(number=number, state=state, value=None,
                            values=[vs[i] for i in sorted(vs)] if (vs := vals.get(tid)) else None,
                            datetime_start=local(start), datetime_complete=local(end), params={},
                            distributions={}, user_attrs=user.get(tid, {}), system_attrs={},
                            intermediate_values=last_report.get(tid, {}), trial_id=tid)
                for tid, number, state, start, end in rows]

