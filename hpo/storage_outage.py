"""A storage that goes away for a while (a database restarted, a file locked): wait for it, within a bound.

Every call of hpo's RDB storage retries errors that mean "the server is not there"
(connection refused or dropped) for up to $HPO_STORAGE_OUTAGE_S seconds (default 60),
so trials ride out a database restart; after that the sweep stops with one line and
the same command resumes it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, TypeVar

from optuna.storages import RDBStorage

from hpo.errors import HpoError

T = TypeVar("T")
# Storage calls that are safe to repeat when the server was not reached.
RDB_CALLS = (
    "create_new_study", "create_new_trial", "get_all_studies", "get_all_trials", "get_best_trial", "get_n_trials",
    "get_study_directions", "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs",
    "get_study_user_attrs", "get_trial", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "set_study_system_attr",
    "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param", "set_trial_state_values",
    "set_trial_system_attr", "set_trial_user_attr", "record_heartbeat",
    # what Optuna's _CachedStorage (around every RDBStorage in a Study) calls directly
    "_create_new_trial", "_get_best_trial_id", "_get_trials", "_set_trial_param",
)


class StorageDown(HpoError):
    """The storage stayed unreachable for longer than the bound."""


def bound_s() -> float:
    value = os.environ.get("HPO_STORAGE_OUTAGE_S", "60")
    return float(value) if value.replace(".", "", 1).isdigit() else 60.0


def unreachable(exc: BaseException | None) -> bool:
    """A connection that failed or dropped (not a bad query): sqlalchemy / psycopg OperationalError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("OperationalError", "InterfaceError") and "locked" not in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry(fn: Callable[[], T], what: str = "--storage", bound: float | None = None) -> T:
    """fn(), again and again while the server is unreachable, for at most `bound` seconds."""
    deadline = time.monotonic() + (bound_s() if bound is None else bound)
    pause = 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            if not unreachable(exc):
                raise
            if time.monotonic() > deadline:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise StorageDown(f"{what}: unreachable for {bound_s() if bound is None else bound:.0f} s "
                                  f"({first}); run the same command to resume once it is back") from None
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def _patient(name: str) -> Callable[..., Any]:
    base = getattr(RDBStorage, name)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return retry(lambda: base(self, *args, **kwargs), self.hpo_label)

    call.__name__ = name
    return call


class PatientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls wait out a database that is briefly down."""

    hpo_label = "--storage"


for _name in RDB_CALLS:
    setattr(PatientRDBStorage, _name, _patient(_name))


def _read_trials(self: PatientRDBStorage, study_id: int, states: Any, included_trial_ids: set[int],
                 trial_id_greater_than: int) -> Any:
    """Every whole read of the study's trials, without Optuna's ORM (hpo.rdb_whole), patient as the rest."""
    from hpo import rdb_whole

    return retry(lambda: rdb_whole.read_trials(self, study_id, states, included_trial_ids, trial_id_greater_than),
                 self.hpo_label)


PatientRDBStorage._get_trials = _read_trials  # type: ignore[method-assign]  # noqa: SLF001
