"""Live progress of a sweep with rich: counts of the budget, best so far, each worker's trial."""

from __future__ import annotations

import sys
from typing import Iterable

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hpo import storage


class Progress:
    """A rich Live table on a terminal; one line per finished trial elsewhere (logs, CI); nothing with
    --no-progress. Each update reads the trials once: a line costs no recount of the study."""

    def __init__(self, title: str, budget: int, metric: str | None, direction: str, enabled: bool = True):
        self.title, self.budget, self.metric, self.enabled = title, budget, metric, enabled
        self.direction = direction
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self._seen: set[int] = set()
        if enabled and self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def update(self, trials: Iterable[FrozenTrial], workers: int, counts: storage.Counts | None = None) -> None:
        if not self.enabled:
            return
        trials = list(trials)
        if self.live is not None:
            best = storage.best_trial(trials, self.direction)
            self.live.update(self._table(trials, None if best is None else best.value, workers, counts))
            return
        new = [t for t in trials if t.state.is_finished() and t.number not in self._seen]
        if not new:
            return
        finished = (counts or storage.count(trials)).finished  # once per update, not once per new trial
        for t in new:
            self._seen.add(t.number)
            value = "" if t.value is None else f" {self.metric or 'value'}={t.value:.4g}"
            why = t.user_attrs.get("hpo.reason")
            print(f"[{self.title}] trial {t.number} {t.state.name.lower()}{value}"
                  f"{f' ({why})' if why else ''}  [{finished}/{self.budget}]", file=sys.stderr, flush=True)

    def _table(self, trials: list[FrozenTrial], best: float | None, workers: int,
               counts: storage.Counts | None) -> Table:
        c = counts or storage.count(trials)
        best_txt = "-" if best is None else f"{best:.4g}"
        table = Table(title=f"{self.title}: {c.finished}/{self.budget} done  "
                            f"({c.complete} complete, {c.pruned} pruned, {c.failed} failed)  "
                            f"best {self.metric or 'value'} {best_txt}  workers {workers}")
        for col in ("worker", "gpu", "trial", "step", self.metric or "value"):
            table.add_column(col)
        for t in trials:
            if t.state == TrialState.RUNNING:
                steps = t.intermediate_values
                last = max(steps) if steps else None
                table.add_row(str(t.user_attrs.get("hpo.worker", "?")),
                              str(t.user_attrs.get("hpo.cuda_visible_devices", "") or "cpu"),
                              str(t.number), "-" if last is None else str(last),
                              "-" if last is None else f"{steps[last]:.4g}")
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
