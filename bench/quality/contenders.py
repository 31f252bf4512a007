"""The in-library contenders: each searcher and scheduler from its own library, driven through `sim.simulate`.

Every contender sees the same search space (surrogates.Param: W&B's uniform / log_uniform_values /
int_uniform) and the same Hyperband ladder (min_iter from the task, eta 3, max = the task's epochs).

| name | library | what |
|---|---|---|
| random | Optuna RandomSampler | random search, every trial to the last epoch |
| random_sha | Optuna RandomSampler + SuccessiveHalvingPruner | random + W&B's hyperband as hpo maps it |
| optuna_tpe_hb | Optuna TPESampler() + HyperbandPruner | plain Optuna, its own defaults |
| optuna_tpe_sha | Optuna TPESampler() + SuccessiveHalvingPruner(min_early_stopping_rate=0) | plain Optuna (Optuna 5's TPESampler() is constant_liar=True, multivariate=True); hpo's mapping of bayes + hyperband until this benchmark showed the next row better |
| tpe_indep_sha / tpe_nolie_sha / tpe_startup30_sha | TPE multivariate=False (Optuna 4's default: hpo's mapping of bayes + hyperband since this benchmark, so the in-library proxy for hpo's default) / constant_liar=False (several workers only) / n_startup_trials=30, + SHA | candidate hpo defaults |

Not run: TPE group=True (the space has no conditional parameters, so it is multivariate TPE exactly: the smoke
run gave identical trials), Optuna's GPSampler (seconds a trial at a few hundred trials: not cheap enough here).
| wandb_bayes_hb | sweeps 0.2.0 next_run (bayes, GP) + stop_runs (hyperband) | what `wandb agent` gets |
| ray_asha_optuna | Ray Tune AsyncHyperBandScheduler + OptunaSearch | Ray's objects, driven by the simulator |
| dehb | DEHB 0.1.1 ask/tell | multi-fidelity state of the art (each job trains from scratch to its fidelity) |
"""

from __future__ import annotations

import math
import random as pyrandom
import tempfile
from typing import Any

import numpy as np

from surrogates import Task

METRIC = "val_accuracy"


def _optuna_dists(task: Task) -> dict[str, Any]:
    from optuna.distributions import FloatDistribution, IntDistribution

    return {p.name: IntDistribution(int(p.low), int(p.high)) if p.integer else
            FloatDistribution(p.low, p.high, log=p.log) for p in task.space}


class OptunaContender:
    def __init__(self, task: Task, seed: int, sampler: str, pruner: str | None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        s = optuna.samplers
        samplers = {
            "random": lambda: s.RandomSampler(seed=seed),
            # Optuna 5's TPESampler() is multivariate=True, constant_liar=True: hpo's mapping exactly
            "tpe": lambda: s.TPESampler(seed=seed),
            "tpe_indep": lambda: s.TPESampler(seed=seed, multivariate=False),
            "tpe_nolie": lambda: s.TPESampler(seed=seed, constant_liar=False),
            "tpe_group": lambda: s.TPESampler(seed=seed, multivariate=True, group=True),
            "tpe_startup30": lambda: s.TPESampler(seed=seed, n_startup_trials=30),
        }
        low, top = task.min_iter, task.max_epochs
        pruners = {
            None: lambda: optuna.pruners.NopPruner(),
            "sha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=3,
                                                                  min_early_stopping_rate=0),
            "hb": lambda: optuna.pruners.HyperbandPruner(min_resource=low, max_resource=top, reduction_factor=3),
        }
        self.study = optuna.create_study(direction="maximize", sampler=samplers[sampler](),
                                         pruner=pruners[pruner]())
        self.dists, self.task, self.trials = _optuna_dists(task), task, {}

    def ask(self):
        t = self.study.ask(self.dists)
        self.trials[t.number] = t
        return t.number, dict(t.params), self.task.max_epochs

    def report(self, tid, epoch, value):
        t = self.trials[tid]
        t.report(value, epoch)
        return t.should_prune()

    def end(self, tid, epoch, value, stopped, seconds):
        import optuna

        t = self.trials.pop(tid)
        if stopped:
            self.study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(t, value)


class WandbContender:
    """W&B's own: sweeps.next_run (bayes: its GP) and sweeps.stop_runs (hyperband) after every epoch."""

    def __init__(self, task: Task, seed: int):
        import sweeps

        np.random.seed(seed)
        pyrandom.seed(seed)
        self.sweeps, self.task = sweeps, task
        raw = {"method": "bayes", "metric": {"name": METRIC, "goal": "maximize"},
               "parameters": {p.name: p.wandb() for p in task.space},
               "early_terminate": {"type": "hyperband", "min_iter": task.min_iter, "eta": 3}}
        self.config = dict(sweeps.SweepConfig(raw))
        self.runs: dict[str, Any] = {}
        self.marked: set[str] = set()
        self.n = 0

    def ask(self):
        sw = self.sweeps
        run = sw.next_run(self.config, list(self.runs.values()), validate=False)
        self.n += 1
        name = f"r{self.n}"
        run.name, run.state = name, sw.RunState.running
        self.runs[name] = run
        cfg = {k: (v["value"].item() if hasattr(v["value"], "item") else v["value"]) for k, v in run.config.items()}
        return name, cfg, self.task.max_epochs

    def report(self, tid, epoch, value):
        run = self.runs[tid]
        run.history.append({METRIC: value})
        run.summary_metrics[METRIC] = value
        if tid not in self.marked:
            self.marked.update(r.name for r in self.sweeps.stop_runs(self.config, list(self.runs.values()),
                                                                     validate=False))
        return tid in self.marked

    def end(self, tid, epoch, value, stopped, seconds):
        run = self.runs[tid]
        run.state = self.sweeps.RunState.killed if stopped else self.sweeps.RunState.finished
        run.stopped = stopped


class _RayTrial:
    def __init__(self, tid: str):
        self.trial_id = tid


class RayContender:
    """Ray Tune's AsyncHyperBandScheduler (ASHA) + OptunaSearch (its default TPE), as `tune.Tuner` would
    call them: suggest -> on_trial_add -> on_trial_result per epoch -> on_trial_complete with the last result
    (Ray tells a stopped trial to OptunaSearch as COMPLETE with its last value, as Tune does)."""

    def __init__(self, task: Task, seed: int):
        import optuna
        from ray import tune
        from ray.tune.schedulers import AsyncHyperBandScheduler
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        np.random.seed(seed)
        space = {p.name: (tune.randint(int(p.low), int(p.high) + 1) if p.integer else
                          tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high))
                 for p in task.space}
        self.search = OptunaSearch(space=space, metric=METRIC, mode="max",
                                   sampler=optuna.samplers.TPESampler(seed=seed))
        self.sched = AsyncHyperBandScheduler(time_attr="training_iteration", metric=METRIC, mode="max",
                                             max_t=task.max_epochs, grace_period=task.min_iter, reduction_factor=3)
        self.task, self.n, self.last = task, 0, {}

    def ask(self):
        self.n += 1
        tid = f"t{self.n}"
        cfg = self.search.suggest(tid)
        self.sched.on_trial_add(None, _RayTrial(tid))
        return tid, cfg, self.task.max_epochs

    def report(self, tid, epoch, value):
        from ray.tune.schedulers import TrialScheduler

        result = {METRIC: value, "training_iteration": epoch}
        self.last[tid] = result
        self.search.on_trial_result(tid, result)
        return self.sched.on_trial_result(None, _RayTrial(tid), result) == TrialScheduler.STOP

    def end(self, tid, epoch, value, stopped, seconds):
        result = self.last.pop(tid)
        if stopped:  # Tune removes a trial its scheduler stopped; a finished one completes
            self.sched.on_trial_remove(None, _RayTrial(tid))
        else:
            self.sched.on_trial_complete(None, _RayTrial(tid), result)
        self.search.on_trial_complete(tid, result)


class DEHBContender:
    """DEHB's ask/tell: each job is a configuration and a fidelity (epochs, from scratch); fitness is minus
    the val_accuracy at that fidelity, cost its simulated seconds."""

    def __init__(self, task: Task, seed: int):
        from loguru import logger

        from dehb import DEHB

        self.tmp = tempfile.TemporaryDirectory(prefix="sq-dehb-")
        logger.remove()
        self.dehb = DEHB(f=None, dimensions=len(task.space), configspace=False, min_fidelity=task.min_iter,
                         max_fidelity=task.max_epochs, eta=3, n_workers=1, seed=seed, output_path=self.tmp.name,
                         save_freq="end")
        logger.remove()
        self.task, self.jobs, self.n = task, {}, 0

    def ask(self):
        job = self.dehb.ask()
        self.n += 1
        cfg = {p.name: p.from_unit(float(u)) for p, u in zip(self.task.space, np.clip(job["config"], 0, 1))}
        self.jobs[self.n] = job
        return self.n, cfg, max(1, min(self.task.max_epochs, int(round(job["fidelity"]))))

    def report(self, tid, epoch, value):
        return False

    def end(self, tid, epoch, value, stopped, seconds):
        self.dehb.tell(self.jobs.pop(tid), {"fitness": -value, "cost": seconds})


IN_LIBRARY = {
    "random": lambda t, s: OptunaContender(t, s, "random", None),
    "random_sha": lambda t, s: OptunaContender(t, s, "random", "sha"),
    "optuna_tpe_hb": lambda t, s: OptunaContender(t, s, "tpe", "hb"),
    "optuna_tpe_sha": lambda t, s: OptunaContender(t, s, "tpe", "sha"),
    "tpe_indep_sha": lambda t, s: OptunaContender(t, s, "tpe_indep", "sha"),
    "tpe_nolie_sha": lambda t, s: OptunaContender(t, s, "tpe_nolie", "sha"),
    "tpe_startup30_sha": lambda t, s: OptunaContender(t, s, "tpe_startup30", "sha"),
    "wandb_bayes_hb": WandbContender,
    "ray_asha_optuna": RayContender,
    "dehb": DEHBContender,
}
ONLY_PARALLEL = {"tpe_nolie_sha"}  # identical to optuna_tpe_sha with one worker
