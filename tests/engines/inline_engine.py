"""A fourth engine, from outside hpo: what a third-party package needs to add one.

Registered by the entry point in `hpo_inline_engine-0.1.dist-info` (as `[project.entry-points."hpo.backends"]`
in a real package's pyproject), it runs each trial in the controller's own process, one after another, with
Optuna's RandomSampler (or the grid in order). It talks to the Session only through `SessionPort`: it
never opens or closes the study, the parent run or the budget.
"""

from __future__ import annotations

import optuna

from hpo.backends.base import Schedule
from hpo.distributions import to_optuna
from hpo.tracking import Tracker
from hpo.trainer_ref import load
from hpo.trial import TrialRun

WORKER = "inline0"


class InlineBackend:
    name = "inline"
    mirrored = True  # the Session writes its trials into the study

    def check(self, plan):
        return ["metrics: the inline engine optimises one metric"] if plan.spec.multi else []

    def schedule(self, spec, options):
        return Schedule(self.name, lines=("Inline  no early stopping: every trial runs all its epochs, one at a time.",))

    def begin(self, plan):
        return plan

    def prestart(self, plan, port):
        return None

    def run(self, plan, port, early=None):
        metric = plan.spec.metric
        trainer = load(plan.trainer)
        runner = TrialRun(Tracker(plan.tracking_uri), port.parent.experiment_id, port.parent.run_id, self.name,
                          plan.name, WORKER, plan.trainer, literal=plan.spec.literal_names)
        space = {p.name: to_optuna(p) for p in plan.spec.params}
        sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory: only asks
        number = len(port.study.get_trials(deepcopy=False))  # a resume goes on from the trials already there
        while port.remaining() > 0 and port.aborting is None:
            params = plan.grid[number % len(plan.grid)] if plan.grid else sampler.ask(space).params
            key = number
            port.trial_started(key, number, params, worker=WORKER)
            outcome, _ = runner.run(number, params, trainer, metric,
                                    on_start=lambda run_id: port.trial_updated(key, run_id=run_id),
                                    on_report=lambda step, metrics: port.trial_reported(key, step, metrics.get(metric)))
            port.trial_finished(key, outcome)
            number += 1


BACKEND = InlineBackend()
