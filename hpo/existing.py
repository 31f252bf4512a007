"""An existing sweep for the read-only commands (status, best, trials, report, dashboard): its study, opened
without creating anything, or the controller's status.json when that may answer."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hpo import status_file
from hpo.api import prepare
from hpo.errors import UsageError
from hpo.plan import Settings

if TYPE_CHECKING:
    import optuna


def open_study(s: Settings) -> tuple[optuna.Study, str]:
    """The sweep's study, without creating anything."""
    import optuna  # here: `cached` answers without loading Optuna (about half of `hpo status`'s time)

    from hpo import storage

    sw = prepare(replace(s, inspect_only=True))
    storage.require_existing(sw.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=sw.name, storage=storage.open_storage(sw.storage))
    except KeyError:
        raise UsageError(f"--study: no study named {sw.name!r} in {storage.mask(sw.storage)}") from None
    return study, sw.spec.metric or "value"


def cached(s: Settings) -> tuple[dict[str, Any], str] | None:
    """(`status.json`'s content, the metric) when the controller's file may answer (hpo.status_file)."""
    sw = prepare(replace(s, inspect_only=True))
    data = status_file.read(sw.dir / status_file.NAME, sw.storage, sw.name)
    return (data, sw.spec.metric or "value") if data else None


