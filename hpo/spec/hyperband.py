"""Engine-neutral Hyperband numbers: the resource ladder every engine's early stopping is built from.

W&B's `early_terminate` gives min_iter (or max_iter and s) and eta; Optuna's
HyperbandPruner and Ray's ASHA need (min_resource, max_resource, eta). Both read them here.
"""

from __future__ import annotations

from hpo.spec.model import Spec


def max_epochs(spec: Spec) -> int | None:
    """The most epochs a trial can run, read from an `epochs` parameter if there is one."""
    try:
        p = spec.param("epochs")
    except StopIteration:
        return None
    if p.distribution == "constant":
        return int(p.config["value"])
    if p.distribution in ("categorical", "int_uniform", "q_uniform"):
        return int(max(p.grid_values()))
    return None


def resources(spec: Spec) -> tuple[int, int | str, int]:
    """(min_resource, max_resource or "auto", reduction_factor) of the sweep's Hyperband."""
    hb = spec.hyperband
    assert hb is not None
    eta = int(hb.eta)
    top = hb.max_iter or max_epochs(spec) or "auto"
    if hb.min_iter is not None:
        low = hb.min_iter
    else:
        low = max(1, int(round(hb.max_iter / eta ** int(hb.s))))
    return low, top, eta


def last_step(spec: Spec) -> int | None:
    """The step at which a trial has used its whole budget (never worth stopping there)."""
    if spec.hyperband is None:
        return max_epochs(spec)
    top = resources(spec)[1]
    return top if isinstance(top, int) else None
