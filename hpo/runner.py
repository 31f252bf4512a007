"""One trial as an MLflow child run, the same on every backend.

A backend hands over the trainer, the config, how to stop early and where it
runs; this opens the child run (params, tags), streams the per-epoch metrics in
batches, and closes it with FINISHED / KILLED / FAILED and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hpo import spec as specmod
from hpo.report import Interrupted, Outcome, Reporter, dataset_tags, environment_tags, run_trainer
from hpo.tracking import Tracker


@dataclass
class TrialRun:
    """Where a trial's child run goes and what it is tagged with."""

    tracker: Tracker
    experiment_id: str
    parent_id: str
    backend: str
    study: str
    worker: str
    trainer_ref: str | None = None
    extra_tags: dict[str, str] = field(default_factory=dict)

    def tags(self, number: int | str, config: Mapping[str, Any]) -> dict[str, str]:
        return {
            **environment_tags(), **self.extra_tags, "hpo.backend": self.backend, "hpo.study": self.study,
            "hpo.trial": str(number), "hpo.worker": self.worker,
            "hpo.cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "hpo.state": "running", "hpo.seed": str(config.get("seed", 0)),
        }

    def run(self, number: int | str, params: Mapping[str, Any], trainer: Callable, metric: str | None,
            should_stop: Callable[[int, float], bool] = lambda s, v: False,
            on_start: Callable[[str], None] = lambda run_id: None,
            on_report: Callable[[int, Mapping[str, float]], None] = lambda s, m: None,
            tags: Mapping[str, str] | None = None) -> tuple[Outcome, Reporter]:
        """Run the trainer under a child run; Interrupted ends the run KILLED and propagates."""
        config = specmod.unflatten(params)
        run_id = self.tracker.start_child(self.experiment_id, self.parent_id, f"trial-{number}", params,
                                          {**self.tags(number, config), **(tags or {})})
        on_start(run_id)

        def sink(step: int, metrics: Mapping[str, float]) -> None:
            self.tracker.log_metrics(run_id, step, metrics)
            on_report(step, metrics)

        reporter = Reporter(metric, sink=sink, should_stop=should_stop)
        try:
            outcome = run_trainer(trainer, config, reporter)
        except Interrupted:
            self.end(run_id, config, Outcome("interrupted", reason="interrupted"))
            raise
        self.end(run_id, config, outcome)
        return outcome, reporter

    def end(self, run_id: str, config: Mapping[str, Any], outcome: Outcome) -> None:
        self.tracker.end_child(run_id, outcome.state, {**outcome.tags(), **dataset_tags(config, self.trainer_ref)})
