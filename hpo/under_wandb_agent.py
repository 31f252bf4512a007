"""Glue for running the trainer under a stock `wandb agent` (imported only by `python -m hpo.train`)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping


@contextlib.contextmanager
def wandb_run_reporter(config: dict[str, Any]) -> Iterator[Any]:
    """Under `wandb agent` (WANDB_SWEEP_ID is set) log each epoch to the W&B run; else yield None."""
    if not os.environ.get("WANDB_SWEEP_ID"):
        yield None
        return
    import wandb

    run = wandb.init(config=config)
    config.update(dict(run.config))

    def report(step: int, metrics: Mapping[str, float]) -> None:
        run.log({"epoch": step, **metrics})

    try:
        yield report
    finally:
        run.finish()
