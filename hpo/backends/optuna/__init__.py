"""Optuna: a queue of trials in the study's storage, one long-lived worker process per slot.

The controller (this engine, under the Session) enqueues the budget and starts the
workers (hpo.backends.optuna.worker, CUDA_VISIBLE_DEVICES per slot); each worker
takes queued trials, samples them with the sweep's sampler (TPE/random/grid) and
stops them with its pruner (W&B's hyperband: SuccessiveHalvingPruner, or Optuna's
HyperbandPruner with --optuna-pruner hyperband). `hpo worker` on another machine joins the same
queue. The workers write the study themselves: this engine is not mirrored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.backends.base import Schedule
from hpo.plan import Options

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort
    from hpo.spec import Spec


class OptunaBackend:
    name = "optuna"
    mirrored = False

    def check(self, plan: Plan) -> list[str]:
        from hpo import distributions as space

        return space.check(plan.spec)

    def schedule(self, spec: Spec, options: Options | None = None) -> Schedule:
        from hpo import distributions as space

        problems = space.check(spec)
        if problems:
            return Schedule(self.name, problem=problems[0], lines=(f"Optuna  cannot run this sweep: {problems[0]}",))
        if spec.hyperband is None:
            return Schedule(self.name, lines=("Optuna  NopPruner: every trial runs all its epochs.",))
        rungs, lines = space.schedule_lines(spec, Options.of(options).optuna_pruner or space.PRUNERS[0])
        return Schedule(self.name, tuple(rungs), True, tuple(lines))

    def begin(self, plan: Plan) -> Plan:
        return plan

    def prestart(self, plan: Plan, port: SessionPort) -> Any:
        """The workers start importing (torch, MLflow: seconds) while the Session opens the parent run."""
        from hpo.backends.optuna import controller

        return controller.prestart(plan, port)

    def run(self, plan: Plan, port: SessionPort, early: Any = None) -> None:
        from hpo.backends.optuna import controller

        controller.run(plan, port, early)


BACKEND = OptunaBackend()
