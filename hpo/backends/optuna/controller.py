"""The Optuna engine's loop: keep the queue at the budget, keep every slot's worker alive."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import optuna

from hpo import best_models, forkserver, keys, packing, trainer_ref
from hpo import distributions as space
from hpo.worker_pool import Pool
from hpo.slots import Slot, slot_env, threads_per_worker
from hpo.supervisor import Supervisor

if TYPE_CHECKING:
    from hpo.plan import Plan
    from hpo.backends.port import SessionPort

POLL_SECONDS = 0.25


def worker_argv(study: str, slot: Slot, parent_pid: int, extra: list[str] = ()) -> list[str]:
    """The argv of a slot's worker (secrets such as the storage URL travel in the env, not here)."""
    return [sys.executable, "-m", "hpo", "worker", "--study", study, "--name", slot.name,
            "--parent-pid", str(parent_pid), *extra]


def make_pool(plan: Plan, extra_env: dict[str, str] | None = None) -> Pool:
    # `auto` may grow each GPU to its cap: threads are shared as if it had.
    threads = threads_per_worker(list(plan.slots) * (plan.options.pack_cap or 1))
    base = {**os.environ, "HPO_STORAGE": plan.storage, "HPO_TRACKING_URI": plan.tracking_uri,
            "HPO_THREADS": str(threads), **(extra_env or {})}
    # Always named, so a worker loads it (and torch) before the study is ready rather than after.
    extra = ["--trainer", plan.trainer or trainer_ref.BUILTIN]
    return Pool(list(plan.slots), lambda s: worker_argv(plan.name, s, os.getpid(), extra),
                lambda s: slot_env(s, base, threads), plan.dir / "logs", preload=preload(plan))


def preload(plan: Plan) -> list[str]:  # noqa: ARG001 - the plan may name more, one day
    """What every worker imports before its first trial, imported once by the pool's fork server. Not the
    trainer (torch for hpo's own): each worker imports it after the fork, in parallel, so the first trial starts
    no later than with plain processes (measured: a server that imported torch too made every worker wait for
    it, +0.7 s to a 2-worker sweep); a user's trainer module may also start threads or open files on import."""
    return [*forkserver.COMMON, "hpo.cli", "hpo.backends.optuna.worker"]


def _grid(plan: Plan) -> list[dict] | None:
    return space.encoded_grid(plan.spec) if plan.grid is not None else None


def prestart(plan: Plan, port: SessionPort) -> Pool:
    """The study exists; its parent run does not yet: the workers import meanwhile, then wait for it.
    The queue is filled first, so a worker that is ready finds trials, not an empty queue."""
    _record_pruner(plan, port.study)
    port.top_up(_grid(plan))
    pool = make_pool(plan, {"HPO_LAUNCH": port.parent.launch,
                            "HPO_KEEP_MODELS": str(best_models.DEFAULT_K if plan.options.keep_models is None else plan.options.keep_models)})
    pool.start_all()
    return pool


def run(plan: Plan, port: SessionPort, early: Pool | None = None) -> None:
    pool = early if isinstance(early, Pool) else prestart(plan, port)
    supervisor = Supervisor(pool, port)  # the loop refills empty slots while trials wait
    interrupted = False
    try:
        _watch(plan, port, supervisor)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        supervisor.stop(interrupted)  # each worker ends its own trial; one killed after the grace cannot


def _record_pruner(plan: Plan, study: optuna.Study) -> None:
    """The workers build the pruner the study records; a study keeps the one it started with."""
    asked = plan.options.optuna_pruner or space.PRUNERS[0]
    kept = study.user_attrs.get(keys.OPTUNA_PRUNER)
    if kept is None and keys.SPEC in study.user_attrs:  # a study from before the choice existed
        kept = "hyperband"  # ran Optuna's HyperbandPruner: it keeps it
        study.set_user_attr(keys.OPTUNA_PRUNER, kept)
    if kept is None:
        study.set_user_attr(keys.OPTUNA_PRUNER, asked)
    elif kept != asked and plan.spec.hyperband is not None and plan.options.optuna_pruner is not None:
        print(f"hpo: --optuna-pruner: study {plan.name!r} was started with {kept!r} and keeps it",
              file=sys.stderr)


def _packer(plan: Plan, port: SessionPort) -> packing.Packer | None:
    """`--workers-per-gpu auto`: grows the pool once per GPU, from what NVML saw of its first worker."""
    cap = plan.options.pack_cap
    return packing.Packer(list(plan.slots), cap, port.gpus, port.packed) if cap else None


def _watch(plan: Plan, port: SessionPort, supervisor: Supervisor) -> None:
    grid, pool = _grid(plan), supervisor.pool
    packer = _packer(plan, port)
    while True:
        polled_at = time.monotonic()
        supervisor.poll()
        trials, c = port.top_up(grid)  # one read of the study per poll, shared below
        if packer is not None and packer.pending():
            pool.slots.extend(packer.added(trials, len(pool.slots)))
        if c.waiting:
            pool.fill()
        port.refresh(pool.alive(), trials, c)
        port.fail_stale()
        if not pool.workers and not c.waiting:
            port.fail_orphans("worker died", "worker gone before the trial ended")
            # Wait for every RUNNING trial: on other machines, or taken by a worker killed before it
            # said who it is (failed as an orphan after a grace period, then run again).
            _, now = port.top_up(grid)
            if not now.running and not now.waiting:
                return
        # Reads are incremental (the journal's replay; on an RDB, hpo.rdb_reads), but Optuna still builds its list
        # of every trial: at 100,000 trials a poll is tens of ms, so it waits 20 times as long (at most 2 s) and
        # the controller's polls stay under ~5 % of a core (the whole poll counts: the read is most of it).
        time.sleep(min(2.0, max(POLL_SECONDS, 20 * (time.monotonic() - polled_at))))
