"""The offline W&B controller: W&B's sweep engine in `hpo run`, agents on this machine.

The controller owns the engine (hpo.backends.wandb_engine) and is the only
writer of the Optuna mirror. One long-lived agent per slot
(`python -m hpo.backends.wandb_agent`, CUDA_VISIBLE_DEVICES from the slot) talks
to it over a local authenticated socket: it asks for a run, streams each epoch
and gets "continue" or "stop" back, and says how the run ended. The address is in
the agent's argv; the authkey only in its environment.

Messages (tuples; only "next" and "report" are answered, in order):
    agent -> ("hello", worker)                 <- ("setup", {...})
    agent -> ("next",)                         <- ("run", {"name", "number", "params"}) | ("done",)
    agent -> ("begin", name, params)           <- ("number", n)     online: the W&B server chose the run
    agent -> ("started", name, mlflow_run_id)
    agent -> ("report", name, step, metrics)   <- ("continue",) | ("stop",)
    agent -> ("end", name, outcome_fields)
"""

from __future__ import annotations

import os
import secrets
import socket
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

import optuna

from hpo import mirror
from hpo import study as studymod
from hpo.backends import sigterm_as_ctrl_c
from hpo.backends.wandb_engine import Engine
from hpo.errors import HpoError
from hpo.progress import Progress
from hpo.report import Outcome, git_sha
from hpo.storage import INFRA_REASONS
from hpo.sweep import Sweep
from hpo.workers import Pool

POLL_SECONDS = 0.2
MAX_QUICK_DEATHS = 5
AUTHKEY_ENV = "HPO_WANDB_AUTHKEY"


@dataclass
class Active:
    """A run handed to an agent and not yet ended."""

    number: int
    worker: str
    params: dict[str, Any]
    mlflow_run_id: str = ""
    history: dict[int, float] = field(default_factory=dict)


class Server:
    """A Listener on 127.0.0.1 whose connections are accepted by a background thread."""

    def __init__(self) -> None:
        self.authkey = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.conns: list[Connection] = []
        self.closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self.listener.address
        return f"{host}:{port}"

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except Exception:
                if self.closed:
                    return
                continue
            with self._lock:
                self.conns.append(conn)

    def ready(self, timeout: float) -> list[Connection]:
        with self._lock:
            conns = list(self.conns)
        if not conns:
            time.sleep(timeout)
            return []
        return wait(conns, timeout)  # type: ignore[return-value]

    def drop(self, conn: Connection) -> None:
        with self._lock:
            self.conns.remove(conn)
        conn.close()

    def close(self) -> None:
        self.closed = True
        for conn in list(self.conns):
            self.drop(conn)
        self.listener.close()


class Controller:
    """Hands out the engine's runs, applies its stops, mirrors every ended run."""

    def __init__(self, sw: Sweep, study: optuna.Study, tracker, exp: str, parent: str,
                 online_sweep: str | None = None):
        from hpo.backends.wandb import launch_plan

        self.sw, self.study, self.tracker, self.exp, self.parent = sw, study, tracker, exp, parent
        self.engine = None if online_sweep else Engine(sw.spec, sw.budget)
        if self.engine is not None:
            self.engine.resume(previous_runs(study, sw.spec.metric))
        self.begun = len(study.get_trials(deepcopy=False))
        self.active: dict[str, Active] = {}
        self.workers: dict[Connection, str] = {}
        self.server = Server()
        plan = {p.slot.index: p for p in launch_plan(
            list(sw.slots), connect=self.server.address, sweep=online_sweep, count=sw.budget if online_sweep else None,
            trainer=sw.trainer, parent_pid=os.getpid(), extra_env={AUTHKEY_ENV: self.server.authkey.hex()})}
        self.pool = Pool(list(sw.slots), lambda s: list(plan[s.index].argv), lambda s: dict(plan[s.index].env),
                         sw.dir / "logs")
        self.progress = Progress(sw.name, sw.budget, sw.spec.metric, sw.spec.direction, sw.progress)
        self.setup = {
            "study": sw.name, "tracking_uri": sw.tracking_uri, "experiment_id": exp, "parent_id": parent,
            "metric": sw.spec.metric, "trainer": sw.trainer, "dir": str(sw.dir.resolve()),
            "project": sw.options.get("project") or sw.name, "entity": sw.options.get("entity"),
            "group": sw.name, "git_sha": git_sha() or "none", "mode": "online" if online_sweep else "offline",
            "names": [p.name for p in sw.spec.params],
        }

    # -- the loop ---------------------------------------------------------
    def serve(self) -> None:
        quick_deaths = 0
        self.pool.start_all()
        while True:
            for conn in self.server.ready(POLL_SECONDS):
                self._receive(conn)
            for e in self.pool.reap():
                if e.died:
                    self._lost(e.slot.name, "worker died", e.describe())
                    quick = time.monotonic() - self.pool.restarts_at.get(e.slot.index, 0) < 5
                    quick_deaths = quick_deaths + 1 if quick else 0
                    if quick_deaths >= MAX_QUICK_DEATHS:
                        raise HpoError(f"wandb agents keep dying at start; see {self.sw.dir / 'logs'}")
                    if self._more():
                        self.pool.start(e.slot)
            self.progress.update(self.study.get_trials(deepcopy=False), self.pool.alive())
            if not self.pool.workers:
                return

    def _more(self) -> bool:
        return self.engine is not None and self.engine.counted() < self.sw.budget

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
            self.active[args[0]].mlflow_run_id = args[1]
        elif kind == "report":
            conn.send(("stop",) if self._report(*args) else ("continue",))
        elif kind == "end":
            self._end(args[0], Outcome(**args[1]))

    def _next(self, worker: str) -> tuple:
        name = secrets.token_hex(4)  # the W&B run id: unique in the project, as wandb makes them
        params = self.engine.propose(name)
        if params is None:
            return ("done",)
        number = len(self.engine.runs) - 1
        self.active[name] = Active(number, worker, params)
        return ("run", {"name": name, "number": number, "params": params})

    def _begin(self, worker: str, name: str, params: dict[str, Any]) -> int:
        number, self.begun = self.begun, self.begun + 1
        self.active[name] = Active(number, worker, params)
        return number

    def _report(self, name: str, step: int, metrics: dict[str, float]) -> bool:
        metric = self.sw.spec.metric
        if metric in metrics:
            self.active[name].history[step] = metrics[metric]
        return self.engine is not None and self.engine.report(name, metrics)

    def _end(self, name: str, outcome: Outcome) -> None:
        run = self.active.pop(name)
        if self.engine is not None:
            self.engine.end(name, outcome.state, outcome.reason in INFRA_REASONS)
        slot = next((s for s in self.sw.slots if s.name == run.worker), None)
        attrs = {"hpo.worker": run.worker, "hpo.backend": "wandb", "hpo.mlflow_run_id": run.mlflow_run_id,
                 "wandb.run_id": name, "wandb.mode": self.setup["mode"], "hpo.trial": run.number,
                 "hpo.host": socket.gethostname(),
                 "hpo.cuda_visible_devices": slot.cuda_visible_devices if slot else ""}
        mirror.add_trial(self.study, self.sw.spec, run.params, outcome, run.history, attrs)

    def _lost(self, worker: str, reason: str, detail: str) -> None:
        """The run of an agent that is gone: ended in MLflow, the engine and the mirror."""
        state = "interrupted" if reason == "interrupted" else "failed"
        for name, run in list(self.active.items()):
            if run.worker == worker:
                if run.mlflow_run_id:
                    self.tracker.end_child(run.mlflow_run_id, state, {"hpo.reason": reason, "hpo.error": detail})
                self._end(name, Outcome(state, reason=reason, error=detail))

    def stop(self, interrupted: bool) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.pool.stop()
        for conn in self.server.ready(0):  # ends the agents sent while stopping
            while conn in self.server.conns and conn.poll():
                self._receive(conn)
        reason = "interrupted" if interrupted else "worker died"
        for worker in {run.worker for run in self.active.values()}:
            self._lost(worker, reason, "the sweep was interrupted" if interrupted else "agent gone")
        self.server.close()
        self.progress.close()


def previous_runs(study: optuna.Study, metric: str | None):
    """Runs an earlier `hpo run` of this sweep handed out, for the engine to see again."""
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned"}
    for t in study.get_trials(deepcopy=False):
        if "wandb.run_id" not in t.user_attrs:
            continue
        history = [{metric or "value": v} for _, v in sorted(t.intermediate_values.items())]
        reason = t.user_attrs.get("hpo.reason")
        yield (t.user_attrs["wandb.run_id"], t.params, history, states.get(t.state, "failed"),
               reason in INFRA_REASONS)


def run(sw: Sweep, online_sweep: str | None = None) -> studymod.Result:
    """Run the sweep to its budget: W&B's engine here (offline), or agents of a W&B server's sweep."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = studymod.open_study(sw)
    tracker, exp, parent = studymod.open_parent(sw, study)
    ctl = Controller(sw, study, tracker, exp, parent, online_sweep)
    previous = signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)
    interrupted = False
    try:
        ctl.serve()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a 2nd Ctrl-C must not cut clean-up
        try:
            ctl.stop(interrupted)
            result = studymod.summarize(sw, study, parent, interrupted)
            studymod.close_parent(sw, tracker, exp, result)
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    return result
