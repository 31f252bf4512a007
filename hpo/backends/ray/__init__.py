"""Ray Tune: Ray places the trials, ASHA (or Ray's HyperBand) stops them early, the Session records them.

The engine starts (or joins) Ray and runs a Tuner for the trials the budget still
needs; each trial opens its own MLflow child run where it runs (trainable.py), so it
nests on a remote node too. A Tune callback in the controller (controller.py) reports
every trial's events to the Session, which writes them into the Optuna study.

A trial whose worker (Ray actor) dies is failed (`worker died`) and Ray runs its
config again; a trainer failure is data, not retried. `hpo run` again after Ctrl-C
runs what the study still lacks in a new Tuner: the experiment follows the study
(storage + name), never an old folder. On a cluster (`--ray-address auto`, or
$RAY_ADDRESS) every node needs hpo and the trainer installed, and a tracking URI it
can reach (`--tracking-uri http://...`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo.backends.base import Schedule
from hpo.errors import MissingDependency
from hpo.plan import Options

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort
    from hpo.spec import Spec


def _space():
    try:
        from hpo.backends.ray import space
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependency("ray[tune]", "--backend ray") from exc
    return space


class RayBackend:
    name = "ray"
    mirrored = True

    def check(self, plan: Plan) -> list[str]:
        _space()
        if plan.retries:
            return ["--retries: Ray Tune re-runs a trial whose worker died by itself; "
                    "retrying trainer failures is on the optuna and wandb engines"]
        return []

    def schedule(self, spec: Spec, options: Options | None = None) -> Schedule:
        space = _space()
        kind = Options.of(options).ray_scheduler  # a dict is taken too
        if spec.hyperband is None:
            return Schedule(self.name, lines=("Ray     FIFO: every trial runs all its epochs.",))
        from hpo.spec import hyperband

        rungs = space.rungs(spec, kind)  # read from the scheduler that run() builds
        low, _, eta = hyperband.resources(spec)
        if kind == "hyperband":
            line = (f"Ray     HyperBandScheduler(max_t={space.max_t(spec)}, reduction_factor={eta}): synchronous; "
                    f"trials pause at rungs {rungs} and the best 1/{eta} resume (from their first epoch).")
        else:
            line = (f"Ray     ASHA(grace_period={low}, max_t={space.max_t(spec)}, "
                    f"reduction_factor={eta}): asynchronous; at steps {rungs} a trial continues only if it is "
                    f"in the top 1/{eta} of trials that reached that step.")
        return Schedule(self.name, tuple(rungs), True, (line,))

    def begin(self, plan: Plan) -> Plan:
        return plan

    def prestart(self, plan: Plan, port: SessionPort) -> None:
        return None

    def run(self, plan: Plan, port: SessionPort, early: Any = None) -> None:
        _space()
        from hpo.backends.ray import controller

        controller.run(plan, port)


BACKEND = RayBackend()
