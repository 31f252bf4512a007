"""`hpo pause | resume | stop`: sweep control as `wandb sweep --pause/--resume/--stop` has it, through the storage,
so it reaches the controller and every worker on every machine.

- pause: running trials finish; no worker takes a new one until `hpo resume` (the sweep stays up).
- stop: the controller stops the sweep as Ctrl-C does: running trials end `interrupted` (KILLED), exit 130;
  `hpo run` with the same command resumes it (a run clears a pause or a stop it finds).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import optuna

from hpo import keys

PAUSED, STOPPED = "paused", "stopped"
POLL_SECONDS = 1.0


def state(study: optuna.Study) -> str | None:
    """paused, stopped, or None (running); read from the storage, not a cached copy."""
    return study._storage.get_study_user_attrs(study._study_id).get(keys.CONTROL) or None  # noqa: SLF001


def set_state(study: optuna.Study, value: str | None) -> None:
    study.set_user_attr(keys.CONTROL, value or "")


def wait_while_paused(study: optuna.Study, every: float = POLL_SECONDS) -> bool:
    """A worker, before it takes a trial: block while the sweep is paused. False when it is stopped."""
    while (now := state(study)) == PAUSED:
        time.sleep(every)
    return now != STOPPED


class Watch:
    """The controller's side: calls `on_stop` once when the sweep is stopped (from here or another machine)."""

    def __init__(self, study: optuna.Study, on_stop: Callable[[], None], every: float = POLL_SECONDS) -> None:
        self.study, self.on_stop, self.every = study, on_stop, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="hpo-control")
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.wait(self.every):
            try:
                if state(self.study) == STOPPED:
                    self.on_stop()
                    return
            except Exception:  # noqa: BLE001 - a storage hiccup: the next poll reads it again
                pass

    def close(self) -> None:
        self.done.set()
