"""An event-driven simulation of k parallel workers on the simulated-time axis, for the in-library contenders.

Each worker trains one trial at a time, epoch by epoch; an epoch ends at the worker's clock plus the
surrogate's predicted seconds for it. Events are handled in simulated-time order, so an asynchronous
scheduler (ASHA, Optuna's pruners, W&B's hyperband, DEHB's async mode) sees reports in the order real
training would give, and a free worker asks its contender for the next trial at that moment. Nothing sleeps.

A contender is an object with
    ask() -> (trial id, config, epochs to run)            # None: nothing more to run
    report(trial id, epoch, val_accuracy) -> bool          # True: stop the trial (early termination)
    end(trial id, last epoch, last val_accuracy, stopped: bool, seconds used)

The run goes on until both budgets are used: `epochs` (summed over workers) and `seconds` (simulated
wall clock). Every reported epoch is an observation (cumulative epochs, simulated time, val_accuracy).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from surrogates import Task


class LazyCurve:
    """A trial's learning curve, evaluated in growing chunks (most trials stop after a few epochs)."""

    def __init__(self, task: Task, config: dict[str, Any]):
        self.task, self.config, self.acc, self.dt = task, config, np.empty(0), np.empty(0)

    def at(self, epoch: int) -> tuple[float, float]:
        if epoch > len(self.acc):
            if self.task.name == "hartmann6":
                self.acc, self.dt = self.task.curve(self.config)
            else:
                from surrogates import data_dir, lcbench_curves

                # the whole curve costs one call; an LCBench call costs ~40 us a row: grow by 3x
                n = min(self.task.max_epochs, max(epoch, 3 * max(len(self.acc), self.task.min_iter)))
                (acc, dt), = lcbench_curves(self.task.name.split(":")[1], [self.config],
                                            str(data_dir(self.task.data)), n)
                # the surrogate's time is cumulative; its diff over a prefix is the same as over the whole
                self.acc, self.dt = acc, dt
        return float(self.acc[epoch - 1]), float(self.dt[epoch - 1])


def simulate(task: Task, contender: Any, workers: int, epochs: int, seconds: float,
             hard_cap: float = 4.0) -> dict[str, Any]:
    obs_e, obs_t, obs_v = [], [], []
    used, clock, seq, started = 0, 0.0, 0, 0
    heap: list[tuple[float, int, int]] = []
    running: dict[int, dict[str, Any]] = {}
    spent = lambda: used >= epochs and clock >= seconds  # noqa: E731
    over = lambda: used >= hard_cap * epochs  # noqa: E731

    def launch(worker: int, at: float) -> bool:
        nonlocal seq, started
        got = contender.ask()
        if got is None:
            return False
        tid, config, n = got
        st = {"tid": tid, "curve": LazyCurve(task, config), "epoch": 0, "n": n, "start": at, "worker": worker}
        acc, dt = st["curve"].at(1)
        seq += 1
        started += 1
        running[seq] = st
        heapq.heappush(heap, (at + dt, seq, worker))
        return True

    for w in range(workers):
        launch(w, 0.0)
    while heap:
        t, key, w = heapq.heappop(heap)
        st = running[key]
        st["epoch"] += 1
        e = st["epoch"]
        acc, _ = st["curve"].at(e)
        used += 1
        clock = t
        obs_e.append(used)
        obs_t.append(t)
        obs_v.append(acc)
        stop = contender.report(st["tid"], e, acc)
        if spent() or over():
            break
        if stop or e >= st["n"]:
            contender.end(st["tid"], e, acc, bool(stop and e < task.max_epochs), t - st["start"])
            del running[key]
            launch(w, t)
        else:
            _, dt = st["curve"].at(e + 1)
            heapq.heappush(heap, (t + dt, key, w))
    return {"epochs": np.asarray(obs_e, dtype=np.int32), "time": np.asarray(obs_t), "val": np.asarray(obs_v),
            "trials": started, "used_epochs": used, "clock": clock}
