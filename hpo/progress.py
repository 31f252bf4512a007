"""Live progress of a sweep with rich: the budget as a bar with elapsed time and ETA, the best so far,
each worker's running trial; one line per finished trial where stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Iterable

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hpo import keys, storage

WIDTH = 78  # every line fits an 80-column terminal


def clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """A rich Live view on a terminal; one line per finished trial elsewhere (logs, CI); nothing with
    --no-progress. Each update reads the trials once: a line costs no recount of the study."""

    def __init__(self, title: str, budget: int, metric: str | None, direction: str, enabled: bool = True,
                 finished_before: Iterable[int] = ()):
        self.title, self.budget, self.metric, self.enabled = title, budget, metric, enabled
        self.direction = direction
        self.console = Console(stderr=True)
        self.live: Live | None = None
        self._seen: set[int] = set(finished_before)  # a resume's earlier trials: not printed again
        self._started = time.monotonic()
        self._done_at_start: int | None = None  # trials finished before this run (a resume): not in the rate
        if enabled and self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def update(self, trials: Iterable[FrozenTrial], workers: int, counts: storage.Counts | None = None) -> None:
        if not self.enabled:
            return
        trials = list(trials)
        counts = counts or storage.count(trials)
        if self.live is not None:
            self.live.update(self.view(trials, counts, workers))
            return
        new = [t for t in trials if t.state.is_finished() and t.number not in self._seen]
        if not new:
            return
        for t in new:
            self._seen.add(t.number)
            value = "" if t.values is None else f" {self.metric or 'value'}={storage.primary(t):.4g}"
            why = t.user_attrs.get(keys.REASON)
            print(f"[{self.title}] trial {t.number} {t.state.name.lower()}{value}"
                  f"{f' ({why})' if why else ''}  [{counts.finished}/{self.budget}]", file=sys.stderr, flush=True)

    def view(self, trials: list[FrozenTrial], c: storage.Counts, workers: int, final: str | None = None) -> Group:
        """The bar (done/budget, elapsed, ETA, trials per minute), the counts and best, the running trials."""
        elapsed = time.monotonic() - self._started
        if self._done_at_start is None:
            self._done_at_start = c.finished
        here = c.finished - self._done_at_start
        rate = here / elapsed * 60 if elapsed > 0 else 0.0
        left = max(0, self.budget - c.finished)
        eta = "-" if final or not here else clock(left / (here / elapsed))
        head = Text(f"{self.title[:20]} ")
        tail = Text(f" {c.finished}/{self.budget}  {clock(elapsed)}  ETA {eta}  {rate:.1f}/min")
        bar = ProgressBar(total=max(1, self.budget), completed=min(c.finished, self.budget),
                          width=max(10, WIDTH - len(head) - len(tail)))
        line = Table.grid()
        for _ in range(3):
            line.add_column(no_wrap=True)
        line.add_row(head, bar, tail)
        best = storage.best_trial(trials, self.direction) if self.metric else None  # no metric: values are run times
        best_txt = f"best {self.metric or 'value'} " + ("-" if best is None else f"{best.value:.4g} (trial {best.number})")
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        if done and len(done[0].values) > 1:  # several objectives: no one best
            best_txt = "multi-objective: `hpo best` shows the Pareto front"
        counts = Text(f"{c.complete} complete, {c.pruned} pruned, {c.failed} failed{c.lost}  {best_txt}",
                      overflow="ellipsis", no_wrap=True)
        parts: list = [line, counts]
        if final:
            parts.append(Text(final, overflow="ellipsis", no_wrap=True))
            return Group(*parts)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if running:
            table = Table(box=None, pad_edge=False, show_edge=False, width=WIDTH)
            for col in ("worker", "gpu", "trial", "step", self.metric or "value"):
                table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=24)
            for t in sorted(running, key=lambda t: str(t.user_attrs.get(keys.WORKER, "?"))):
                steps = t.intermediate_values
                last = max(steps) if steps else None
                table.add_row(str(t.user_attrs.get(keys.WORKER, "?")),
                              str(t.user_attrs.get(keys.CUDA_VISIBLE_DEVICES, "") or "cpu"),
                              str(t.number), "-" if last is None else str(last),
                              "-" if last is None else f"{steps[last]:.4g}")
            parts.append(table)
        else:
            parts.append(Text(f"workers {workers}, no trial running", no_wrap=True))
        return Group(*parts)

    def close(self, trials: list[FrozenTrial] | None = None, how: str = "done") -> None:
        """The last frame shows how the sweep ended, not an empty table."""
        if self.live is not None:
            if trials is not None:
                self.live.update(self.view(trials, storage.count(trials), 0, final=how), refresh=True)
            self.live.stop()
