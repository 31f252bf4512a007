"""A fourth engine, from outside hpo: what a third-party package needs to add one (tests only).

Registered by the entry point in `hpo_random_engine-0.1.dist-info` (as `[project.entry-points."hpo.backends"]`
in a real package's pyproject). Its controller asks Optuna's RandomSampler (or the grid, in order) through an
in-memory study that also holds the sweep's pruner (hpo.distributions.pruner: the same Hyperband rungs as the
Optuna engine). Its trials run in hpo's own worker pool: one long-lived worker process per slot
(`python -m random_engine`), watched by hpo's Supervisor, which asks for a trial over hpo.agent_link, reports
each epoch and hears "continue" or "stop" back. The engine tells the Session only through `SessionPort`: it
never opens or closes the study's trials, the parent or child runs, and never counts the budget.

    worker -> ("hello", name)              <- ("setup", {...})
    worker -> ("next",)                    <- ("run", {"key", "number", "params"}) | ("done",)
    worker -> ("started", key, run_id)
    worker -> ("report", key, step, value) <- ("continue",) | ("stop",)
    worker -> ("end", key, outcome_fields)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import optuna

from hpo import distributions, forkserver, keys, liveness
from hpo.agent_link import Server, connect, drive
from hpo.backends.base import Schedule
from hpo.slots import slot_env, threads_per_worker
from hpo.supervisor import Supervisor
from hpo.trial import KILLS_ITS_WORKER, Interrupted, Outcome, State, TrialRun, lost
from hpo.worker_pool import Pool

POLL_S = 0.1
PRELOAD = [*forkserver.COMMON, "random_engine"]  # what the workers' fork server imports once


class RandomBackend:
    name = "random"
    mirrored = True  # the Session writes its trials into the study

    def check(self, plan) -> list[str]:
        return []

    def schedule(self, spec, options) -> Schedule:
        problems = distributions.check(spec)
        if problems:
            return Schedule(self.name, problem=problems[0], lines=(f"Random  cannot run this sweep: {problems[0]}",))
        if spec.hyperband is None or spec.multi:
            return Schedule(self.name, lines=("Random  no early stopping: every trial runs all its epochs.",))
        rungs, lines = distributions.schedule_lines(spec)
        return Schedule(self.name, tuple(rungs), True, ("Random  " + lines[0].removeprefix("Optuna").strip(),))

    def begin(self, plan):
        return plan

    def prestart(self, plan, port):
        """The workers' fork server imports its modules while the Session opens the parent run."""
        return forkserver.ForkServer(PRELOAD) if forkserver.enabled() else None

    def run(self, plan, port, early=None) -> None:
        drive(lambda: Controller(plan, port, early), early)


class Controller:
    def __init__(self, plan, port, server: forkserver.ForkServer | None = None) -> None:
        self.plan, self.port, self.spec = plan, port, plan.spec
        pruner = optuna.pruners.NopPruner() if self.spec.multi else distributions.pruner(self.spec)
        self.number = len(port.snapshot()[0])  # a resume goes on from the trials already there
        self.asks = optuna.create_study(  # in memory: it only proposes and prunes; the Session keeps the record
            directions=self.spec.directions, sampler=optuna.samplers.RandomSampler(seed=self.number), pruner=pruner)
        self.space = distributions.distributions(self.spec)
        self.trials: dict[int, optuna.Trial] = {}  # key (the trial's number) -> its trial in `asks`
        self.active: dict[int, str] = {}  # key -> the worker running it
        self.handed: dict[int, dict[str, Any]] = {}  # key -> the params of a trial running now
        self.workers: dict[Any, str] = {}
        self.server = Server()
        threads = threads_per_worker(list(plan.slots))
        env = {s.index: {**slot_env(s, os.environ, threads), **self.server.env} for s in plan.slots}
        argv = [sys.executable, "-m", "random_engine", "--connect", self.server.address]
        # The workers are forked from a fork server that imported this module (and what it imports) once.
        self.pool = Pool(list(plan.slots), lambda s: [*argv, "--name", s.name], lambda s: env[s.index],
                         plan.dir / "logs", preload=PRELOAD, server=server)
        self.supervisor = Supervisor(self.pool, port, on_gone=lambda e, reason, detail: self._lost(
            e.slot.name, reason, detail), restart=lambda slot: port.remaining() > 0)
        self.cuda = {s.name: s.cuda_visible_devices for s in plan.slots}
        self.setup = {"study": plan.name, "tracking_uri": plan.tracking_uri,
                      "experiment_id": port.parent.experiment_id, "parent_id": port.parent.run_id,
                      "metric": self.spec.metric, "trainer": plan.trainer, "literal": sorted(self.spec.literal_names),
                      "objectives": list(self.spec.metric_names) if self.spec.multi else []}

    def serve(self) -> None:
        self.supervisor.start_all()
        while self.pool.workers:
            for conn in self.server.ready(POLL_S):
                self._receive(conn)
            self.supervisor.poll()
            self.port.refresh(self.pool.alive())

    def _receive(self, conn) -> None:
        try:
            kind, *args = conn.recv()
        except (EOFError, OSError):
            self.server.drop(conn)
            return
        if kind == "hello":
            self.workers[conn] = args[0]
            conn.send(("setup", self.setup))
        elif kind == "next":
            conn.send(self._next(self.workers.get(conn, "?")))
        elif kind == "started":
            self.port.trial_updated(args[0], run_id=args[1])
        elif kind == "report":
            conn.send(("stop",) if self._report(*args) else ("continue",))
        elif kind == "end":
            self._end(args[0], Outcome(**args[1]))

    def _next(self, worker: str) -> tuple:
        if self.port.remaining() <= 0 or self.port.aborting is not None:
            return ("done",)
        trial = self.asks.ask()
        if self.plan.grid:
            params = self._next_grid_point()
        else:
            params = {name: distributions.suggest(trial, name, dist) for name, dist in self.space.items()}
        key, self.number = self.number, self.number + 1
        self.trials[key], self.active[key], self.handed[key] = trial, worker, params
        self.port.trial_started(key, key, params, worker, self.cuda.get(worker, ""))
        return ("run", {"key": key, "number": key, "params": params})

    def _next_grid_point(self) -> dict[str, Any]:
        """The first grid point not yet finished (a resume skips what is done; a point that killed its worker
        too often is failed for good) nor running now."""
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        taken = [dict(t.params) for t in self.port.snapshot()[0] if t.state in done or (
            t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(keys.REASON) == KILLS_ITS_WORKER)]
        taken += list(self.handed.values())
        free = [p for p in self.plan.grid if p not in taken]
        return free[0] if free else self.plan.grid[self.number % len(self.plan.grid)]

    def _report(self, key: int, step: int, value: float | None) -> bool:
        self.port.trial_reported(key, step, value)
        trial = self.trials.get(key)
        if trial is None or value is None or self.spec.multi:
            return False
        trial.report(value, step)
        return trial.should_prune()

    def _end(self, key: int, outcome: Outcome) -> None:
        self.active.pop(key, None)
        self._tell(key, outcome)
        self.port.trial_finished(key, outcome)

    def _tell(self, key: int, outcome: Outcome) -> None:
        self.handed.pop(key, None)
        trial = self.trials.pop(key, None)
        if trial is None:
            return
        if outcome.state == State.COMPLETE and outcome.values is not None:
            self.asks.tell(trial, list(outcome.values))
        elif outcome.state == State.COMPLETE and outcome.value is not None:
            self.asks.tell(trial, outcome.value)
        else:
            self.asks.tell(trial, state=optuna.trial.TrialState.PRUNED if outcome.state == State.PRUNED
                           else optuna.trial.TrialState.FAIL)

    def _lost(self, worker: str, reason: str, detail: str) -> int:
        """The trials of a worker that is gone: the Session fails them (in MLflow and the study)."""
        n = 0
        for key, w in list(self.active.items()):
            if w == worker:
                self.active.pop(key)
                self._tell(key, self.port.trial_lost(key, reason, detail))
                n += 1
        return n

    def stop(self, interrupted: bool) -> None:
        self.pool.stop()  # SIGTERM: each worker ends its trial as interrupted and says so
        for conn in self.server.ready(0):
            while conn in self.server.conns and conn.poll():
                self._receive(conn)
        for worker in set(self.active.values()):
            self._lost(worker, "interrupted" if interrupted else "worker died",
                       "the sweep was interrupted" if interrupted else "worker gone")
        self.server.close()


BACKEND = RandomBackend()


# -- the worker process ----------------------------------------------------------------------
def _on_sigterm(signum, frame):
    raise Interrupted("interrupted")


def serve(name: str, conn) -> int:
    from hpo.tracking import Tracker
    from hpo.trainer_ref import load

    def ask(*msg):
        conn.send(msg)
        return conn.recv()

    setup = ask("hello", name)[1]
    trainer = load(setup["trainer"])
    runner = TrialRun(Tracker(setup["tracking_uri"]), setup["experiment_id"], setup["parent_id"], "random",
                      setup["study"], name, setup["trainer"], literal=frozenset(setup["literal"]))
    while (msg := ask("next"))[0] == "run":
        job, stop = msg[1], [False]
        key = job["key"]

        def on_report(step, metrics, key=key, stop=stop):
            stop[0] = ask("report", key, step, metrics.get(setup["metric"]))[0] == "stop"

        try:
            outcome, _ = runner.run(job["number"], job["params"], trainer, setup["metric"],
                                    should_stop=lambda s, v, stop=stop: stop[0],
                                    on_start=lambda run_id, key=key: conn.send(("started", key, run_id)),
                                    on_report=on_report, objectives=tuple(setup["objectives"]))
        except Interrupted:
            conn.send(("end", key, lost("interrupted").fields()))
            raise
        conn.send(("end", key, outcome.fields()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="random_engine")
    p.add_argument("--connect", required=True)
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    liveness.start_from_env()  # the Supervisor kills a worker that stops renewing its lease
    try:
        return serve(a.name, connect(a.connect))
    except (Interrupted, KeyboardInterrupt, EOFError, BrokenPipeError):
        return 130


if __name__ == "__main__":
    sys.exit(main())
