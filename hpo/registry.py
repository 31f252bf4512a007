"""`--register NAME`: the sweep's best model as a new version of a registered MLflow model.

The version's source is the best complete trial's logged model (hpo's trainer logs it, a program logs
its own into the run hpo gives it as $MLFLOW_RUN_ID). The version carries `hpo.study`, `hpo.trial`,
`hpo.metric`, `hpo.goal`, `hpo.value` (and the dataset fingerprint and git commit when the trial has
them). The alias `best` moves to it only when it beats the version that holds `best` now on the same
metric and goal; otherwise the version is registered and the alias stays, with the reason said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo import keys
from hpo.errors import HpoError, UsageError
from hpo.storage import mask, mask_text

ALIAS = "best"


class RegistryFailed(HpoError):
    """The registry could not take the model: the sweep's results stand, the exit code is 1."""

    exit_code = 1


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    model_uri: str  # models:/m-... : the logged model the version points at
    alias_moved: bool
    note: str  # what happened to the alias, in words

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "uri": self.uri, "model_uri": self.model_uri,
                "alias_best": self.alias_moved, "note": self.note}


def check_name(name: str) -> None:
    """MLflow's own rule for registered-model names, as one `--register:` line."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise UsageError(f"--register: {exc.message}") from None
    if len(name) > 256:
        raise UsageError(f"--register: at most 256 characters (got {len(name)})")


def logged_model(tracker: Any, experiment_id: str, run_id: str) -> Any | None:
    """The newest MLflow model logged into `run_id` (by hpo, or by the trial's own program)."""
    from hpo.tracking import _retry

    found = _retry(lambda: tracker.client.search_logged_models([experiment_id],
                                                               filter_string=f"source_run_id = '{run_id}'"))
    ready = [m for m in found if str(m.status).upper().endswith("READY")]  # not one whose upload failed
    return max(ready, key=lambda m: m.creation_timestamp, default=None)


def register(tracker: Any, name: str, experiment_id: str, study: str, best_run_id: str | None,
             metric: str | None, goal: str) -> Registered:
    """Register the best trial's model as a new version of `name` (once: a resumed sweep reuses it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not best_run_id:
        raise RegistryFailed(f"--register: no trial completed, so there is no model to register as {name!r}")
    client = tracker.client
    run = tracker.get_run(best_run_id)
    trial = run.data.tags.get(keys.TRIAL, "?")
    model = logged_model(tracker, experiment_id, best_run_id)
    if model is None:
        raise RegistryFailed(
            f"--register: the best trial ({trial}, MLflow run {best_run_id}) has no logged model; a program logs "
            "its own with mlflow.<flavor>.log_model inside mlflow.start_run() ($MLFLOW_RUN_ID is its run), a "
            "train() function hands it to report.model(...) or returns it")
    value = run.data.tags.get(keys.KEPT_VALUE) or _value(run, metric)
    try:
        versions = [v for v in client.search_model_versions(f"run_id = '{best_run_id}'") if v.name == name]
        if versions:
            mv = max(versions, key=lambda v: int(v.version))
        else:
            try:
                client.create_registered_model(name, description="registered by hpo (--register)")
            except MlflowException as exc:
                if "ALREADY_EXISTS" not in str(exc.error_code):
                    raise
            tags = {keys.STUDY: study, keys.TRIAL: trial, keys.METRIC: metric or "", keys.GOAL: goal,
                    keys.VALUE: value or ""}
            for key in (keys.DATASET, keys.DATASET_FINGERPRINT, keys.GIT_SHA):
                if run.data.tags.get(key):
                    tags[key] = run.data.tags[key]
            mlflow.set_tracking_uri(tracker.uri)  # MLflow resolves a models:/ source through the process's URI
            mv = client.create_model_version(name, source=f"models:/{model.model_id}", run_id=best_run_id,
                                             tags=tags, model_id=model.model_id)
        moved, note = _alias(client, name, mv)
        tracker.set_tags(best_run_id, {keys.REGISTERED: f"{name}/{mv.version}"})
    except MlflowException as exc:
        raise RegistryFailed(f"--register: the MLflow registry at {mask(tracker.uri)} refused {name!r}: "
                             f"{mask_text(exc.message.splitlines()[0][:300])}") from None
    return Registered(name, str(mv.version), f"models:/{model.model_id}", moved, note)


def _alias(client: Any, name: str, mv: Any) -> tuple[bool, str]:
    """Move `best` to `mv` when it beats the holder on the same metric and goal."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        holder = None
    if holder is not None and str(holder.version) == str(mv.version):
        return True, f"@{ALIAS} is version {mv.version}"
    if holder is not None:
        old, new = holder.tags, mv.tags
        same = (old.get(keys.METRIC), old.get(keys.GOAL)) == (new.get(keys.METRIC), new.get(keys.GOAL))
        if not same or not old.get(keys.VALUE) or not new.get(keys.VALUE):
            return False, (f"@{ALIAS} stays on version {holder.version}: it was ranked by "
                           f"{old.get(keys.METRIC) or '?'} ({old.get(keys.GOAL) or '?'}), this one by "
                           f"{new.get(keys.METRIC) or '?'} ({new.get(keys.GOAL) or '?'})")
        a, b = float(new[keys.VALUE]), float(old[keys.VALUE])
        wins = a > b if new.get(keys.GOAL) == "maximize" else a < b
        if not wins:
            return False, (f"@{ALIAS} stays on version {holder.version}: its {old[keys.METRIC]} {b:.6g} is not "
                           f"beaten by this one's {a:.6g}")
    client.set_registered_model_alias(name, ALIAS, mv.version)
    was = f" (was version {holder.version})" if holder is not None else ""
    return True, f"@{ALIAS} -> version {mv.version}{was}"


def _value(run: Any, metric: str | None) -> str | None:
    if metric and metric in run.data.metrics:
        return repr(float(run.data.metrics[metric]))
    return None


def lookup(tracker: Any, experiment_id: str, run_id: str) -> dict[str, Any]:
    """`hpo best --model`: the run's logged model URI and its registered versions (with their aliases)."""
    model = logged_model(tracker, experiment_id, run_id)
    out: dict[str, Any] = {"model_uri": f"models:/{model.model_id}" if model else None, "registered": []}
    for mv in tracker.client.search_model_versions(f"run_id = '{run_id}'"):
        full = tracker.client.get_model_version(mv.name, mv.version)  # a search leaves the aliases out
        aliases = sorted(getattr(full, "aliases", []) or [])
        out["registered"].append({"name": mv.name, "version": str(mv.version), "uri": f"models:/{mv.name}/{mv.version}",
                                  "aliases": aliases})
    return out
