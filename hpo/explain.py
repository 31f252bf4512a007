"""`hpo explain`: what "hyperband" will actually do on each engine for this sweep."""

from __future__ import annotations

import math

from hpo import space
from hpo.spec import Spec


def _optuna(spec: Spec) -> list[str]:
    low, top, eta = space.hyperband_resources(spec)
    if top == "auto":
        return [f"Optuna  HyperbandPruner(min_resource={low}, max_resource='auto', reduction_factor={eta}):",
                "        max_resource is learned from the first finished trial."]
    n = int(math.floor(math.log(top / low, eta) + 1e-9)) + 1
    lines = [f"Optuna  HyperbandPruner(min_resource={low}, max_resource={top}, reduction_factor={eta}): "
             f"{n} bracket(s) of successive halving; each trial lands in one bracket (by a hash of its number)."]
    for b in range(n):
        rungs = [low * eta ** (b + k) for k in range(n - b) if low * eta ** (b + k) < top]
        lines.append(f"        bracket {b}: keeps the top 1/{eta} at steps {rungs or '(none: runs to the end)'}")
    return lines


def _ray(spec: Spec) -> list[str]:
    low, top, eta = space.hyperband_resources(spec)
    top = top if top != "auto" else 100
    rungs, r = [], low
    while r < top:
        rungs.append(r)
        r *= eta
    return [f"Ray     ASHA(grace_period={low}, max_t={top}, reduction_factor={eta}): asynchronous; at steps "
            f"{rungs} a trial continues only if it is in the top 1/{eta} of trials that reached that step."]


def _wandb(spec: Spec) -> list[str]:
    hb = spec.hyperband
    top = space.max_epochs(spec) or 100
    bands = [b for b in hb.rungs(limit=top) if b < top]
    return [f"W&B     hyperband (eta={hb.eta}): one ladder; a running run is stopped once its history passes "
            f"index {bands} (after {[b + 1 for b in bands]} reports) if its {spec.metric} is outside the "
            f"top 1/{hb.eta} of all runs' values there."]


def explain(spec: Spec) -> str:
    head = f"{spec.name or 'sweep'}: method {spec.method}, metric {spec.metric} ({spec.goal}), {len(spec.params)} parameters"
    if spec.hyperband is None:
        return head + "\nno early_terminate: every trial runs all its epochs on every engine."
    lines = [head, *_wandb(spec), *_ray(spec)]
    try:
        lines += _optuna(spec)
    except Exception as exc:  # noqa: BLE001 - a distribution Optuna rejects
        lines.append(f"Optuna  cannot run this sweep: {exc}")
    return "\n".join(lines)
