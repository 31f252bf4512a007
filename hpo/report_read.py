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

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial

from hpo import keys, rdb_whole, storage
from hpo.storage_outage import retry

LEAN_ATTRS = (keys.WORKER, keys.REASON, keys.ERROR, keys.RETRY_OF)  # what the report shows of every trial


class Trials:
    """A study's trials for a report: `all` lean on an RDB storage, `whole(...)` of the few it draws (module doc)."""

    def __init__(self, study: optuna.Study, lean: bool = True) -> None:
        self._study = study
        self._rdb = storage.rdb_of(study._storage) if lean else None  # noqa: SLF001
        self._whole: dict[int, FrozenTrial] = {}  # number -> the trial read whole
        self.asked_whole = 0  # trials read whole (tests/test_report_read.py)
        self.all = self._lean() if self._rdb is not None else study.get_trials(deepcopy=False)

    def whole(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """These trials with their params, every report and every attribute, in the same order."""
        if self._rdb is None:
            return trials
        ids = {t._trial_id for t in trials if t.number not in self._whole}  # noqa: SLF001
        if ids:
            # Optuna's read by id (hpo's RDBStorage: hpo.rdb_whole, waiting out an outage)
            read = self._rdb._get_trials(self._study._study_id, None, ids, max(ids))  # noqa: SLF001
            self.asked_whole += len(ids)
            self._whole.update((t.number, t) for t in read)
        return [self._whole.get(t.number, t) for t in trials]  # a trial deleted meanwhile: as it was read

    def _lean(self) -> list[FrozenTrial]:
        return retry(self._read_lean, getattr(self._rdb, "hpo_label", "--storage"))

    def _read_lean(self) -> list[FrozenTrial]:
        t, v, iv, ua = (models.TrialModel, models.TrialValueModel, models.TrialIntermediateValueModel,
                        models.TrialUserAttributeModel)
        mine = t.study_id == self._study._study_id  # noqa: SLF001
        last = (sqlalchemy.select(iv.trial_id, sqlalchemy.func.max(iv.step).label("step"))
                .join(t, t.trial_id == iv.trial_id).where(mine).group_by(iv.trial_id).subquery())
        with rdb_whole.reading(self._rdb) as session:
            rows = rdb_whole.trial_rows(session, [mine])
            values = session.execute(sqlalchemy.select(v.trial_id, v.trial_value_id, v.objective, v.value,
                                                       v.value_type).join(t, t.trial_id == v.trial_id)
                                     .where(mine)).all()
            reports = session.execute(sqlalchemy.select(iv.trial_id, iv.trial_intermediate_value_id, iv.step,
                                                        iv.intermediate_value, iv.intermediate_value_type)
                                      .join(last, sqlalchemy.and_(iv.trial_id == last.c.trial_id,
                                                                  iv.step == last.c.step))).all()
            attrs = session.execute(sqlalchemy.select(ua.trial_id, ua.trial_user_attribute_id, ua.key, ua.value_json)
                                    .join(t, t.trial_id == ua.trial_id)
                                    .where(mine, ua.key.in_(LEAN_ATTRS))).all()
        return rdb_whole.build(rows, [], values, attrs, [], reports)  # no params, no system attributes
