"""Optuna backend: a queue of trials in the study's storage, one worker process per slot.

The controller enqueues the budget, starts the workers (CUDA_VISIBLE_DEVICES
per slot), watches them, fails and replaces the trial of a worker that dies,
and closes the MLflow parent with the summary.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import optuna

from hpo import storage, study as studymod
from hpo.backends import sigterm_as_ctrl_c
from hpo.errors import HpoError
from hpo.progress import Progress
from hpo.sweep import Sweep
from hpo.workers import Exit, Pool, slot_env, threads_per_worker, worker_argv

POLL_SECONDS = 0.25
MAX_QUICK_DEATHS = 5  # a worker that dies this often within seconds of starting is broken


def make_pool(sw: Sweep, extra_env: dict[str, str] | None = None) -> Pool:
    threads = threads_per_worker(list(sw.slots))
    base = {**os.environ, "HPO_STORAGE": sw.storage, "HPO_TRACKING_URI": sw.tracking_uri,
            "HPO_THREADS": str(threads), **(extra_env or {})}
    extra = ["--trainer", sw.trainer] if sw.trainer else []
    return Pool(list(sw.slots), lambda s: worker_argv(sw.name, s, os.getpid(), extra),
                lambda s: slot_env(s, base, threads), sw.dir / "logs")


def run(sw: Sweep) -> studymod.Result:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = studymod.open_study(sw)
    tracker, exp, parent = studymod.open_parent(sw, study)
    # A controller killed earlier may have left trials RUNNING: their workers are gone.
    studymod.fail_orphans(study, tracker, set(), "worker died", "found RUNNING when the sweep resumed")
    storage.queue_retries(study, sw.options.get("retries", 0))
    storage.fill_queue(study, sw.budget, sw.grid)
    pool = make_pool(sw)
    progress = Progress(sw.name, sw.budget, sw.spec.metric, sw.spec.direction, sw.progress)
    previous = signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)
    interrupted, aborted = False, False
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        pool.start_all()
        _watch(sw, study, tracker, pool, progress)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        aborted = True
        raise
    finally:
        # A second Ctrl-C must not cut the clean-up short: runs would stay RUNNING.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for e in pool.stop():
                if e.died and not interrupted:
                    _on_death(study, tracker, e)
            why = "interrupted" if interrupted else "worker died"
            studymod.fail_orphans(study, tracker, set(), why)
            progress.close()
            result = studymod.summarize(sw, study, parent, interrupted)
            studymod.close_parent(sw, tracker, exp, result, failed=aborted)
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    return result


def _watch(sw: Sweep, study: optuna.Study, tracker, pool: Pool, progress: Progress) -> None:
    quick_deaths = 0
    while True:
        for e in pool.reap():
            if e.died:
                _on_death(study, tracker, e)
                # Killed from outside (signal) is not a crash loop; exiting with an error at start is.
                quick = e.code > 0 and time.monotonic() - pool.restarts_at.get(e.slot.index, 0) < 5
                quick_deaths = quick_deaths + 1 if quick else 0
                if quick_deaths >= MAX_QUICK_DEATHS:
                    raise HpoError(f"workers keep dying at start; see {sw.dir / 'logs' / (e.slot.name + '.log')}")
        storage.queue_retries(study, sw.options.get("retries", 0))
        storage.fill_queue(study, sw.budget, sw.grid)
        trials = study.get_trials(deepcopy=False)
        c = storage.count(trials)
        if c.waiting:
            pool.fill()
        progress.update(trials, pool.alive())
        _fail_stale(study, tracker)
        if not pool.workers and not c.waiting:
            studymod.fail_orphans(study, tracker, set(), "worker died", "worker gone before the trial ended")
            if not _remote_running(study):
                storage.queue_retries(study, sw.options.get("retries", 0))
                storage.fill_queue(study, sw.budget, sw.grid)
                if not storage.count(study.get_trials(deepcopy=False)).waiting:
                    return
        time.sleep(POLL_SECONDS)


def _fail_stale(study: optuna.Study, tracker) -> None:
    """Trials whose worker (on any machine) stopped sending heartbeats: failed and re-queued."""
    stale = set(storage.stale_trial_ids(study))
    if not stale:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t._trial_id in stale:  # noqa: SLF001
            where = f"{t.user_attrs.get('hpo.worker', '?')} on {t.user_attrs.get('hpo.host', '?')}"
            studymod.fail_trial(study, tracker, t, "worker died",
                                f"no heartbeat for {storage.heartbeat_grace()} s from {where}")


def _remote_running(study: optuna.Study) -> int:
    """Trials still RUNNING on other machines (`hpo worker` elsewhere): wait for them."""
    host = socket.gethostname()
    return sum(t.user_attrs.get("hpo.host", host) != host
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _on_death(study: optuna.Study, tracker, e: Exit) -> None:
    """Fail the dead worker's trial in Optuna and MLflow; the caller refills the queue."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("hpo.pid") == e.pid and t.user_attrs.get("hpo.host") == socket.gethostname():
            studymod.fail_trial(study, tracker, t, "worker died", f"{e.describe()} on {e.slot.name}")
