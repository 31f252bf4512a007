"""The offline W&B controller: W&B's sweep engine in `hpo run`, agents on this machine.

The controller owns the engine (engine.py) and reports each run's events to the
Session, which writes the Optuna mirror. One long-lived agent per slot
(`python -m hpo.backends.wandb.agent`, CUDA_VISIBLE_DEVICES from the slot) talks
to it over a local authenticated socket: it asks for a run, streams each epoch
and gets "continue" or "stop" back, and says how the run ended. The address is in
the agent's argv; the authkey only in its environment.

Messages (tuples; only "next" and "report" are answered, in order):
    agent -> ("hello", worker)                 <- ("setup", {...})
    agent -> ("next",)                         <- ("run", {"name", "number", "params", "tags"}) | ("done",)
    agent -> ("begin", name, params)           <- ("number", n)     online: the W&B server chose the run
    agent -> ("started", name, mlflow_run_id)
    agent -> ("report", name, step, metrics)   <- ("continue",) | ("stop",)
    agent -> ("end", name, outcome_fields)
"""

from __future__ import annotations

import os
import secrets
from multiprocessing.connection import Connection
from typing import Any

from typing import TYPE_CHECKING

import optuna

from hpo import forkserver, keys, storage
from hpo.agent_link import Server, drive
from hpo.backends.wandb.engine import Engine
from hpo.worker_pool import Pool
from hpo.supervisor import Supervisor
from hpo.provenance import git_sha
from hpo.trial import INFRA_REASONS, Outcome

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort

POLL_SECONDS = 0.2
PRELOAD = [*forkserver.COMMON, "hpo.program"]  # what the agents' fork server imports; not wandb: W&B's own
# state stays per agent


class Controller:
    """Hands out the engine's runs, applies its stops, reports every run's events to the Session."""

    def __init__(self, plan: Plan, port: SessionPort, online_sweep: Any = None,
                 server: forkserver.ForkServer | None = None):
        """`server`: the fork server `prestart` started while the parent run was made (its imports done)."""
        from hpo.backends.wandb.online import launch_plan

        self.plan, self.port, self.study = plan, port, port.study
        self.online_sweep = online_sweep
        self.engine: Engine | None = None  # made in `serve`, once the agents are starting (W&B's sweeps: ~0.7 s)
        self.begun = len(self.study.get_trials(deepcopy=False))
        self.active: dict[str, str] = {}  # run name -> the agent running it
        self.workers: dict[Connection, str] = {}
        self.server = Server()
        launches = {p.slot.index: p for p in launch_plan(
            list(plan.slots), connect=self.server.address, sweep=str(online_sweep) if online_sweep else None,
            count=_run_cap(online_sweep, plan.budget), trainer=plan.trainer, parent_pid=os.getpid(),
            extra_env=self.server.env)}
        self.pool = Pool(list(plan.slots), lambda s: list(launches[s.index].argv),
                         lambda s: dict(launches[s.index].env), plan.dir / "logs", preload=PRELOAD, server=server)
        self.supervisor = Supervisor(self.pool, port, on_gone=self._gone, restart=lambda slot: self._more())
        self.cuda = {s.name: s.cuda_visible_devices for s in plan.slots}
        self.setup = {
            "study": plan.name, "tracking_uri": plan.tracking_uri, "experiment_id": port.parent.experiment_id,
            "parent_id": port.parent.run_id, "metric": plan.spec.metric, "trainer": plan.trainer,
            "dir": str(plan.dir.resolve()), "project": plan.options.project or plan.name,
            "entity": plan.options.entity, "group": plan.name, "git_sha": git_sha() or "none",
            "mode": "online" if online_sweep else "offline", "names": [p.name for p in plan.spec.params],
            "literal": sorted(plan.spec.literal_names),
        }

    # -- the loop ---------------------------------------------------------
    def serve(self) -> None:
        self.supervisor.start_all()
        if not self.online_sweep:
            self.engine = Engine(self.plan.spec, self.plan.budget)
            self.engine.resume(previous_runs(self.study, self.plan.spec.metric))
        while True:
            for conn in self.server.ready(POLL_SECONDS):
                self._receive(conn)
            self.supervisor.poll()
            self.port.refresh(self.pool.alive())
            if not self.pool.workers:
                return

    def _more(self) -> bool:
        return self.engine is not None and self.engine.counted() < self.plan.budget

    def _receive(self, conn: Connection) -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            self.server.drop(conn)
            self.workers.pop(conn, None)
            return
        kind, *args = msg
        if kind == "hello":
            self.workers[conn] = args[0]
            conn.send(("setup", self.setup))
        elif kind == "next":
            conn.send(self._next(self.workers.get(conn, "?")))
        elif kind == "begin":  # online: a run the W&B server handed to this agent
            conn.send(("number", self._begin(self.workers.get(conn, "?"), *args)))
        elif kind == "started":
            self.port.trial_updated(args[0], run_id=args[1])
        elif kind == "report":
            conn.send(("stop",) if self._report(*args) else ("continue",))
        elif kind == "end":
            self._end(args[0], Outcome(**args[1]))

    def _next(self, worker: str) -> tuple:
        name = secrets.token_hex(4)  # the W&B run id: unique in the project, as wandb makes them
        retry = self._retry()
        if retry is not None:
            params, attrs = dict(retry.params), {keys.RETRY_OF: retry.number,
                                                 keys.ATTEMPT: int(retry.user_attrs.get(keys.ATTEMPT, 0)) + 1}
            self.engine.add(name, params, replaces=retry.user_attrs.get("wandb.run_id"))
        else:
            params, attrs = self.engine.propose(name), {}
            if params is None:
                return ("done",)
        number = len(self.engine.runs) - 1
        self._start(name, number, worker, params, attrs)
        return ("run", {"name": name, "number": number, "params": params, "tags": {k: str(v) for k, v in attrs.items()}})

    def _retry(self):
        """A failed run to hand out again (`--retries`); its RUNNING retry marks it taken."""
        if not self.plan.retries or self.engine is None:
            return None
        found = storage.retry_candidates(self.port.snapshot()[0], self.plan.retries)
        return found[0] if found else None

    def _start(self, name: str, number: int, worker: str, params: dict[str, Any], attrs: dict) -> None:
        self.active[name] = worker
        self.port.trial_started(name, number, params, worker, self.cuda.get(worker, ""),
                                   {"wandb.run_id": name, "wandb.mode": self.setup["mode"], **attrs})

    def _begin(self, worker: str, name: str, params: dict[str, Any]) -> int:
        number, self.begun = self.begun, self.begun + 1
        self._start(name, number, worker, params, {})
        return number

    def _report(self, name: str, step: int, metrics: dict[str, float]) -> bool:
        self.port.trial_reported(name, step, metrics.get(self.plan.spec.metric))
        return self.engine is not None and self.engine.report(name, metrics)

    def _end(self, name: str, outcome: Outcome) -> None:
        self.active.pop(name, None)
        if self.engine is not None:
            self.engine.end(name, outcome.state, outcome.infra)
        self.port.trial_finished(name, outcome)

    def _gone(self, e, reason: str, detail: str) -> int:
        return self._lost(e.slot.name, reason, detail)

    def _lost(self, worker: str, reason: str, detail: str) -> int:
        """The runs of an agent that is gone: ended in the engine, and by the Session in MLflow and Optuna."""
        n = 0
        for name, w in list(self.active.items()):
            if w == worker:
                self.active.pop(name)
                outcome = self.port.trial_lost(name, reason, detail)  # a config failed for good is counted
                if self.engine is not None:
                    self.engine.end(name, "interrupted" if reason == "interrupted" else "failed", outcome.infra)
                n += 1
        return n

    def stop(self, interrupted: bool) -> None:
        self.pool.stop()  # not the Supervisor's stop: the ends the agents sent come first, then what is left
        for conn in self.server.ready(0):  # ends the agents sent while stopping
            while conn in self.server.conns and conn.poll():
                self._receive(conn)
        reason = "interrupted" if interrupted else "worker died"
        for worker in set(self.active.values()):
            self._lost(worker, reason, "the sweep was interrupted" if interrupted else "agent gone")
        self.server.close()


def previous_runs(study: optuna.Study, metric: str | None):
    """Runs an earlier `hpo run` of this sweep handed out, for the engine to see again."""
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    for t in study.get_trials(deepcopy=False):
        if "wandb.run_id" not in t.user_attrs:
            continue
        history = [{metric or "value": v} for _, v in sorted(t.intermediate_values.items())]
        reason = t.user_attrs.get(keys.REASON)
        yield (t.user_attrs["wandb.run_id"], t.params, history, states.get(t.state, "failed"),
               reason in INFRA_REASONS)


def _run_cap(online_sweep: Any, budget: int) -> int | None:
    """Each online agent's --count: at most the runs its W&B sweep may make (the server holds the total)."""
    if not online_sweep:
        return None
    return getattr(online_sweep, "run_cap", budget)


def prestart(plan: Plan) -> forkserver.ForkServer | None:
    """The agents' fork server, started while the Session makes the study and the parent run: its imports
    (~2 s) overlap MLflow's set-up instead of following it."""
    return forkserver.ForkServer(PRELOAD) if forkserver.enabled() else None


def run(plan: Plan, port: SessionPort, online_sweep: Any = None, server: forkserver.ForkServer | None = None) -> None:
    """Run the sweep to its budget: W&B's engine here (offline), or agents of a W&B server's sweep."""
    drive(lambda: Controller(plan, port, online_sweep, server), server)
