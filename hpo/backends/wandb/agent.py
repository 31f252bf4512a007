"""One W&B agent process per GPU slot; it keeps the trainer, its data and its CUDA context warm.

    python -m hpo.backends.wandb.agent --connect HOST:PORT --name gpu0-w0          # offline controller
    python -m hpo.backends.wandb.agent --sweep ENTITY/PROJECT/ID --count N [...]   # W&B server (wandb.agent)

Offline, the hpo controller hands out the runs the engine proposed and says when
to stop one; online, the W&B server does (a stop arrives from wandb.agent as an
exception in the run's thread; the trainer stops at its next report). Either way
each run is a wandb run, an MLflow child run (when a controller is connected)
and, through the controller, an Optuna trial.
The controller's authkey comes from the environment, never argv.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Mapping

from hpo import keys, liveness
from hpo.agent_link import connect
from hpo import trainer_ref as trainers
from hpo.program import TRIAL, ProgramTrainer
from hpo.spec import unflatten
from hpo.trial import Interrupted, Outcome, Pruned, Reporter, State, close_child, lost, run_trainer

STOPPED_BY_SERVER = "stopped by the W&B sweep controller"
POLL_S = 0.05  # how often a run's wandb.agent thread looks whether its trial ended


def _on_sigterm(signum, frame):
    raise Interrupted("interrupted")


def _watch_parent(pid: int) -> None:
    # A controller killed with SIGKILL cannot stop its agents: they notice and stop themselves.
    while os.getppid() == pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` in another thread of this process, at its next bytecode (what wandb.agent does to stop a run)."""
    import ctypes

    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def wandb_settings() -> Any:
    import wandb

    # No console capture, system-stats sampler or code saving: the run is a record of the trial.
    return wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False,
                          x_save_requirements=False)


def flat_params(config: Mapping[str, Any], names: list[str] | None) -> dict[str, Any]:
    """A run's nested config -> hpo's dotted parameter names (all leaves when names is None)."""
    if names is None:
        out: dict[str, Any] = {}
        for key, value in config.items():
            if isinstance(value, Mapping) and value:
                out.update({f"{key}.{k}": v for k, v in flat_params(value, None).items()})
            else:
                out[key] = value
        return out
    flat = {}
    for name in names:
        if name in config:  # a literal dotted name is a key of its own
            flat[name] = config[name]
            continue
        node: Any = config
        for part in name.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            flat[name] = node
    return flat


class Agent:
    """The trainer, the MLflow child runs and the link to the controller, for one slot."""

    def __init__(self, name: str, conn: Connection | None, trainer_ref: str | None):
        self.name, self.conn, self.online = name, conn, False
        self.setup: dict[str, Any] = {}
        if conn is not None:
            conn.send(("hello", name))
            self.setup = conn.recv()[1]
        self.trainer_ref = trainer_ref or self.setup.get("trainer")
        self.literal = frozenset(self.setup.get("literal", ()))
        self.trainer = trainers.load(self.trainer_ref)
        self.trial_run = self._trial_run() if self.setup else None
        if os.environ.get("HPO_THREADS") and "torch" in sys.modules:
            import torch

            torch.set_num_threads(int(os.environ["HPO_THREADS"]))

    def _trial_run(self):
        from hpo.trial import TrialRun
        from hpo.tracking import Tracker

        s = self.setup
        return TrialRun(Tracker(s["tracking_uri"]), s["experiment_id"], s["parent_id"], "wandb", s["study"],
                        self.name, self.trainer_ref,
                        extra_tags={keys.GIT_SHA: s.get("git_sha", "none"), keys.WANDB_MODE: s["mode"]},
                        literal=self.literal)

    def ask(self, *msg: Any) -> Any:
        self.conn.send(msg)
        return self.conn.recv()

    def trial(self, wb: Any, name: str, number: int, params: dict[str, Any],
              tags: dict[str, str] | None = None, stopped: Callable[[], bool] | None = None) -> Outcome:
        """Run the trainer once; log every epoch to the wandb run (and MLflow, and the controller).

        `stopped`: online, whether the W&B server said to stop this run; the trainer stops at its next report.
        """
        stop = [False]

        def on_report(step: int, metrics: Mapping[str, float]) -> None:
            if wb is not None:
                wb.log({"epoch": step, **metrics})
            if self.conn is not None:
                stop[0] = self.ask("report", name, step, dict(metrics))[0] == "stop"
            if stopped is not None and stopped():  # this report is logged everywhere first, as offline
                raise Pruned(STOPPED_BY_SERVER)

        metric = self.setup.get("metric")
        run_ids: list[str] = []

        def started(run_id: str) -> None:
            run_ids.append(run_id)
            if self.conn is not None:
                self.conn.send(("started", name, run_id))

        try:
            if self.trial_run is None:
                reporter = Reporter(metric, sink=on_report)
                outcome = run_trainer(self.trainer, unflatten(params, self.literal), reporter)
            else:
                outcome, _ = self.trial_run.run(
                    number, params, self.trainer, metric, should_stop=lambda s, v: stop[0],
                    on_start=started, on_report=on_report, tags=tags)
        except Interrupted:
            self._end(wb, name, lost("interrupted"))
            raise
        before = outcome
        if stop[0] and outcome.state == State.PRUNED:
            outcome = Outcome(State.PRUNED, outcome.value, reason="stopped by W&B hyperband")
        if outcome is not before and run_ids and self.trial_run is not None:
            # The child run was closed with the trainer's view; record W&B's (same as the mirror).
            close_child(self.trial_run.tracker, run_ids[-1], outcome)
        self._end(wb, name, outcome)
        return outcome

    def _end(self, wb: Any, name: str, outcome: Outcome) -> None:
        if self.conn is not None:
            try:
                self.conn.send(("end", name, outcome.fields()))
            except OSError:  # the controller is gone (interrupt): the run still ends below
                pass
        if wb is not None:
            wb.summary["hpo_state"] = outcome.state.value
            wb.finish(exit_code=outcome.state.exit_code)

    # -- offline: runs from the hpo controller ---------------------------
    def serve_offline(self) -> int:
        import wandb

        done = 0
        while (msg := self.ask("next"))[0] == "run":
            job, s = msg[1], self.setup
            if isinstance(self.trainer, ProgramTrainer):  # the program's own wandb.init makes the run
                TRIAL.set({"wandb_run_id": job["name"], "wandb_mode": "offline"})
                self.trial(None, job["name"], job["number"], job["params"], job.get("tags"))
                done += 1
                continue
            wb = wandb.init(mode="offline", dir=s["dir"], project=s["project"], entity=s["entity"],
                            group=s["group"], job_type="hpo-sweep", id=job["name"], name=f"trial-{job['number']}",
                            config=unflatten(job["params"], self.literal), tags=["hpo", self.name], reinit="finish_previous",
                            settings=wandb_settings())
            self.trial(wb, job["name"], job["number"], job["params"], job.get("tags"))
            done += 1
        return done

    # -- online: runs from the W&B server ----------------------------------
    def serve_online(self, sweep: str, count: int | None) -> None:
        import wandb

        entity, project, sweep_id = sweep.split("/")
        self.online = True
        # wandb.agent (its in-process pyagent) calls one_run in a thread of its own for each run, and stops a
        # run by raising a bare Exception in that thread (PyThreadState_SetAsyncExc) wherever it happens to
        # be: in the trainer, or in hpo's own bookkeeping (an MLflow write, a message to the controller, the
        # wandb run's finish), where it would end the trial wrongly or leave the controller's pipe half read.
        # So the trial runs in a thread wandb does not know; wandb's thread only waits for it, and a stop that
        # lands there is passed on: the trainer stops at its next report, PRUNED, as an offline stop does.
        trials: list[threading.Thread] = []
        interrupted = threading.Event()

        def on_signal(signum, frame):
            # Ctrl-C / SIGTERM: the trial ends "interrupted" where it is (as offline, where SIGTERM raises
            # Interrupted in the trial's thread); wandb.agent stops on the KeyboardInterrupt.
            if not interrupted.is_set():
                interrupted.set()
                for t in list(trials):
                    _raise_in(t, Interrupted)
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def one_run() -> None:
            stop, ended = threading.Event(), []

            def work() -> None:
                error = None
                try:
                    wb = wandb.init(settings=wandb_settings())
                    params = flat_params(dict(wb.config), self.setup.get("names"))
                    number = self.ask("begin", wb.id, params)[1] if self.conn is not None else wb.id
                    self.trial(wb, wb.id, number, params, stopped=stop.is_set)
                except BaseException as exc:  # noqa: BLE001 - handed to wandb's thread below
                    error = exc
                finally:
                    ended.append(error)

            t = threading.Thread(target=work, name="hpo-trial", daemon=True)
            trials.append(t)
            t.start()
            while True:
                try:
                    while not ended:  # plain bytecode only: wandb's exception can land anywhere in here
                        time.sleep(POLL_S)
                    break
                except Exception:  # noqa: BLE001 - wandb.agent stopping this run (or stopping on Ctrl-C)
                    stop.set()
            trials.remove(t)
            if isinstance(ended[0], Exception):  # wandb.init failed, say: wandb.agent reports the run errored
                raise ended[0]

        wandb.agent(sweep_id, function=one_run, entity=entity, project=project, count=count)
        if interrupted.is_set():
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hpo.backends.wandb.agent")
    p.add_argument("--name", default=f"agent-{os.getpid()}")
    p.add_argument("--connect", help="HOST:PORT of the hpo controller (authkey in $HPO_AGENT_AUTHKEY)")
    p.add_argument("--sweep", help="ENTITY/PROJECT/SWEEP_ID on the W&B server")
    p.add_argument("--count", type=int)
    p.add_argument("--trainer")
    p.add_argument("--parent-pid", type=int)
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    liveness.start_from_env()  # the controller's Supervisor kills an agent that stops renewing it
    if a.parent_pid:
        threading.Thread(target=_watch_parent, args=(a.parent_pid,), daemon=True).start()
    conn = None
    if a.connect:
        conn = connect(a.connect)
    try:
        agent = Agent(a.name, conn, a.trainer)
        if a.sweep:
            agent.serve_online(a.sweep, a.count)
        else:
            agent.serve_offline()
    except (Interrupted, KeyboardInterrupt):
        return 130
    except Exception as exc:
        from hpo import diskspace

        if diskspace.is_disk_full(exc):  # the controller sees this exit code and stops the sweep
            print(f"hpo agent {a.name}: disk full: {exc}", file=sys.stderr)
            return diskspace.EXIT_CODE
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
