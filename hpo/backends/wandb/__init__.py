"""W&B Sweeps: the sweep on W&B's server when logged in, else W&B's own engine here, with no server.

Online (`hpo run --backend wandb --project P`): wandb.sweep creates the sweep from
sweep.yaml (run_cap = the budget, so it holds across every agent) and one agent
process per slot runs wandb.agent with the trainer in-process. `hpo agent
ENTITY/PROJECT/SWEEP_ID` adds agents to an existing sweep (online.py).

Offline (`--offline`, or no W&B credentials): the controller (controller.py) runs
the `sweeps` package, the engine behind W&B's controller (engine.py), and hands its
runs to one long-lived agent per slot (agent.py). Each run is a wandb run in offline
mode under runs/NAME/wandb/ (`wandb sync` uploads it later). Both ways each run is an
MLflow child run and, through the Session, an Optuna trial.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.backends.base import Schedule
from hpo.plan import Options
from hpo.trainer_ref import PROGRAM

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort
    from hpo.spec import Spec


MULTI_REFUSED = ("metrics: W&B's sweep engines optimise one metric; run a metrics: sweep with --backend optuna "
                 "or --backend ray")


class WandbBackend:
    name = "wandb"
    mirrored = True

    def check(self, plan: Plan) -> list[str]:
        from hpo.backends.wandb import online

        if plan.spec.multi:
            return [MULTI_REFUSED]
        online.wandb_module()
        if not self._offline(plan) and not plan.options.project:
            return ["--project: required for a sweep on the W&B server (or use --offline)"]
        if (plan.trainer or "").startswith(PROGRAM) and not self._offline(plan):
            return ["program: on the W&B server, run the sweep's program with `wandb agent ENTITY/PROJECT/ID`; "
                    "`hpo run --backend wandb --offline` runs it here"]
        if plan.retries and not self._offline(plan):
            return ["--retries: the W&B server decides what runs next; use --offline to retry failed runs"]
        return []

    def schedule(self, spec: Spec, options: Options | None = None) -> Schedule:
        from hpo.spec import hyperband

        hb = spec.hyperband
        if spec.multi:
            return Schedule(self.name, lines=(f"W&B     {MULTI_REFUSED}",), problem=MULTI_REFUSED)
        if hb is None:
            return Schedule(self.name, lines=("W&B     no early_terminate: every run runs all its epochs.",))
        top = hyperband.max_epochs(spec) or 100
        bands = [b for b in hb.rungs(limit=top) if b < top]
        steps = [b + 1 for b in bands]  # band b is the history index b: after b + 1 reports
        line = (f"W&B     hyperband (eta={hb.eta}): one ladder; a running run is stopped once its history passes "
                f"index {bands} (after {steps} reports) if its {spec.metric} is outside the top 1/{hb.eta} of all "
                "runs' values there; it is checked again at every later report.")
        return Schedule(self.name, tuple(steps), False, (line,))

    def begin(self, plan: Plan) -> Plan:
        """Online: the sweep is created on W&B's server first; a server that cannot be reached writes nothing.

        A resumed sweep gets a new W&B sweep whose run_cap is what is left of the budget (none when nothing is)."""
        from hpo.backends.wandb import online

        if self._offline(plan):
            if not plan.options.offline and os.environ.get("WANDB_MODE") not in ("offline", "dryrun"):
                print("hpo: no W&B credentials (WANDB_API_KEY or ~/.netrc): running W&B's sweep engine offline; "
                      "`wandb login` for the W&B server", file=sys.stderr)
            return plan
        left = runs_left(plan)
        if left == 0:
            return plan
        if left < plan.budget:
            print(f"hpo: resuming: a new W&B sweep for the {left} of {plan.budget} runs left", file=sys.stderr)
        sweep = online.OnlineSweep(online.create_sweep(plan, left), left)
        return replace(plan, options=replace(plan.options, online_sweep=sweep))

    def prestart(self, plan: Plan, port: SessionPort) -> Any:
        from hpo.backends.wandb import controller

        return controller.prestart(plan)

    def run(self, plan: Plan, port: SessionPort, early: Any = None) -> None:
        from hpo.backends.wandb import controller

        if plan.options.online_sweep is None and not self._offline(plan):
            if early is not None:
                early.stop()
            return  # nothing was left of the budget when the sweep began: no W&B sweep to run
        controller.run(plan, port, online_sweep=plan.options.online_sweep, server=early)

    @staticmethod
    def _offline(plan: Plan) -> bool:
        from hpo.backends.wandb import online

        asked = plan.options.offline or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        return bool(asked) or not online.has_credentials()


def runs_left(plan: Plan) -> int:
    """The budget less what an earlier `hpo run` of this sweep counted (complete, pruned, failed by the trainer).

    A resumed sweep is a new sweep on W&B's server, for what is left only: the server's run_cap counts every
    run it made, and a run a Ctrl-C interrupted does not use hpo's budget. Read before the study is opened,
    without writing: a sweep never run has no journal, and gets the whole budget.
    """
    import optuna

    from hpo import storage

    if not storage.is_rdb(plan.storage) and not Path(plan.storage).expanduser().exists():
        return plan.budget
    try:
        study = optuna.load_study(study_name=plan.name, storage=storage.open_storage(plan.storage))
    except KeyError:
        return plan.budget
    return max(0, plan.budget - storage.count(study.get_trials(deepcopy=False)).finished)


def agent_command(a: Any) -> int:
    """`hpo agent ENTITY/PROJECT/SWEEP_ID` (online.agent_command; the CLI reaches it here)."""
    from hpo.backends.wandb import online

    return online.agent_command(a)


BACKEND = WandbBackend()
