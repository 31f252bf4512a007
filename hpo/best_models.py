"""The best trials' models: which complete trial keeps its trained model, logged as an MLflow model.

A trainer hands its trained network to `report.model(...)` (hpo's trainer does, wrapped to take raw
inputs) or returns it. When the trial completes, its worker asks MLflow which of the sweep's trials
keep a model now (child runs of the parent tagged `hpo.kept`) and logs this one only when it enters
the top `k` so far: the same rule on every engine, every worker and every machine, with no weights
held in memory after the trial. Models that fall out of the top `k` are deleted (`mlflow gc` frees
their files), except one that is registered. The best trial is always kept: when it ended, it beat
every trial before it.

Logged with MLflow's PyTorch flavor as a `pt2` program (torch.export: no Python class is needed to
load it), with a signature and an input example; `mlflow.pyfunc.load_model(uri).predict(rows)`
returns class logits. Evaluation on the validation split, when the trainer gives one:
`evaluation/confusion_matrix.png` and `evaluation/per_class.json` on the child run.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from hpo import keys

KEPT = keys.KEPT  # "true" on a child run whose model is logged; "evicted" once it fell out of the top k
VALUE = keys.KEPT_VALUE  # the objective value it was ranked by
MODEL_URI = keys.MODEL_URI  # models:/m-... (MLflow 3's logged model)
REGISTERED = keys.REGISTERED  # NAME/VERSION once `--register` made it a model version: never evicted
K_TAG = keys.KEEP_MODELS  # on the parent: how many models the sweep keeps
DEFAULT_K = 3


_EXPORTING = threading.Lock()  # torch.export is not thread-safe: the warm-up and a real export take turns


def warm() -> None:
    """Pay once, early, what a worker's first kept model would (about 4 s on a 2-core VM, 0.3 s after):
    MLflow's PyTorch flavor and its scan of the installed packages, torch.export's first trace, matplotlib
    and scikit-learn's metrics. Run by a worker in a thread while it waits for its controller."""
    with _EXPORTING:
        import importlib

        import matplotlib

        matplotlib.use("Agg")
        for name in ("matplotlib.figure", "sklearn.metrics", "mlflow.models"):
            importlib.import_module(name)
        import mlflow.pytorch
        import torch
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

        warn_dependency_requirement_mismatches(mlflow.pytorch.get_default_pip_requirements())  # cached after
        torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(3, 2),),
                            dynamic_shapes=({0: torch.export.Dim.AUTO},))


@dataclass
class Candidate:
    """What a trainer handed over: the trained model, a few raw inputs, the validation split."""

    model: Any
    input_example: Any = None
    validation: tuple[Any, Any, list[str]] | None = None  # (raw inputs, labels, class names)


@dataclass(frozen=True)
class Policy:
    """How many models the sweep keeps, and what ranks them (from the parent run)."""

    k: int
    metric: str | None
    goal: str

    def better(self, a: float, b: float) -> bool:
        return a > b if self.goal == "maximize" else a < b


@functools.lru_cache(maxsize=16)
def _policy(uri: str, parent_id: str) -> Policy:
    from hpo.tracking import Tracker

    run = Tracker(uri).get_run(parent_id)
    k = run.data.tags.get(K_TAG, str(DEFAULT_K))
    return Policy(int(k) if k.isdigit() else DEFAULT_K, run.data.params.get("metric") or None,
                  run.data.params.get("goal", "minimize"))


def policy(tracker: Any, parent_id: str) -> Policy:
    return _policy(tracker.uri, parent_id)


def keep(tracker: Any, experiment_id: str, parent_id: str, run_id: str, value: float | None,
         candidate: Candidate) -> dict[str, str]:
    """Log the trial's model when it enters the top k so far; the tags that say what was done."""
    rule = policy(tracker, parent_id)
    if rule.k <= 0 or value is None or not math.isfinite(value):
        return {}
    kept = tracker.kept(experiment_id, parent_id)
    if sum(not rule.better(value, v) for _, v, _ in kept) >= rule.k:  # a tie does not push out an earlier one
        return {}
    started = time.monotonic()
    if candidate.validation is not None:  # on the model's own device, before it is moved to the CPU to log
        tracker.log_texts(run_id, evaluation(candidate.model, *candidate.validation), "evaluation")
    uri = log_model(tracker, experiment_id, run_id, candidate)
    tags = {KEPT: "true", VALUE: repr(float(value)), MODEL_URI: uri,
            keys.MODEL_SECONDS: f"{time.monotonic() - started:.3f}"}
    tracker.set_tags(run_id, tags)
    evict(tracker, experiment_id, parent_id, rule)
    return tags


def evict(tracker: Any, experiment_id: str, parent_id: str, rule: Policy, protect: frozenset[str] = frozenset()) -> None:
    """Delete the models ranked below the top k (ties: the earlier trial ranks first). A registered model
    stays, and so do the runs in `protect` (the sweep's best, at its end)."""
    from hpo.tracking import _retry

    sign = -1 if rule.goal == "maximize" else 1
    order = sorted(tracker.kept(experiment_id, parent_id), key=lambda r: (sign * r[1], r[0].info.start_time))
    for run, _, uri in order[rule.k:]:
        if run.data.tags.get(REGISTERED) or run.info.run_id in protect:
            continue
        model_id = uri.rsplit("/", 1)[-1]
        try:
            _retry(lambda: tracker.client.delete_logged_model(model_id))
        except Exception as exc:  # noqa: BLE001 - another worker deleted it first: fine; else it stays kept
            if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
                continue
        tracker.set_tags(run.info.run_id, {KEPT: "evicted"})


def log_model(tracker: Any, experiment_id: str, run_id: str, candidate: Candidate) -> str:
    """The model as an MLflow model on the trial's run (pt2 with an input example, else pickle); its URI."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    if not isinstance(candidate.model, torch.nn.Module):
        raise TypeError(f"the model is a {type(candidate.model).__name__}, not a torch.nn.Module")
    mlflow.set_tracking_uri(tracker.uri)  # MLflow's log_model reads the process's URI and experiment
    mlflow.set_experiment(experiment_id=experiment_id)
    model = candidate.model.cpu().eval()
    kwargs: dict[str, Any] = {"name": "model", "run_id": run_id,
                              "pip_requirements": mlflow.pytorch.get_default_pip_requirements()}
    example = candidate.input_example
    if example is not None:  # the signature comes from it; MLflow's serving check (a reload) is skipped
        with torch.no_grad():
            out = model(torch.as_tensor(example))
        kwargs.update(signature=infer_signature(example, out.numpy()), input_example=example,
                      validate_serving_input=False)
    from hpo.tracking import _retry

    info = None
    with _EXPORTING:
        if example is not None:
            try:
                info = _retry(lambda: mlflow.pytorch.log_model(model, serialization_format="pt2", **kwargs))
            except Exception:  # noqa: BLE001 - a model torch.export cannot trace: pickled instead
                info = None
        if info is None:
            kwargs.pop("validate_serving_input", None)  # pickle's save() would get it
            info = _retry(lambda: mlflow.pytorch.log_model(model, serialization_format="pickle", **kwargs))
    _drop_unfinished(tracker, experiment_id, run_id)
    return info.model_uri


def _drop_unfinished(tracker: Any, experiment_id: str, run_id: str) -> None:
    """Delete the run's logged models that never became READY (an export that failed half-way)."""
    from hpo.tracking import _retry

    found = _retry(lambda: tracker.client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"))
    for m in found:
        if not str(m.status).upper().endswith("READY"):
            try:
                _retry(lambda mid=m.model_id: tracker.client.delete_logged_model(mid))
            except Exception:  # noqa: BLE001 - best effort: it is not READY, so nothing ever uses it
                pass


def evaluation(model: Any, inputs: Any, labels: Any, classes: list[str]) -> dict[str, bytes]:
    """Confusion matrix (PNG) and per-class precision / recall / F1 (JSON) of the model on raw inputs."""
    import numpy as np
    import torch
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    model = model.eval()
    device = next(iter(model.parameters()), torch.zeros(0)).device
    preds = []
    with torch.no_grad():
        for start in range(0, len(inputs), 1024):
            batch = torch.as_tensor(np.asarray(inputs[start:start + 1024])).to(device)
            preds.append(model(batch).argmax(1).cpu().numpy())
    pred, truth = np.concatenate(preds), np.asarray(labels)
    idx = list(range(len(classes)))
    cm = confusion_matrix(truth, pred, labels=idx)
    p, r, f, n = precision_recall_fscore_support(truth, pred, labels=idx, zero_division=0)
    per_class = {"accuracy": float((pred == truth).mean()), "rows": int(len(truth)),
                 "classes": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(n[i])} for i, c in enumerate(classes)}}
    return {"confusion_matrix.png": _matrix_png(cm, classes),
            "per_class.json": (json.dumps(per_class, indent=2) + "\n").encode()}


def _matrix_png(cm: Any, classes: list[str]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    size = max(4.0, 0.45 * len(classes) + 2)
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="confusion matrix (validation split)")
    if len(classes) <= 30:
        top = cm.max() or 1
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()

