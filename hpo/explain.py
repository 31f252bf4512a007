"""`hpo explain`: what "hyperband" will actually do on each engine, asked of each engine itself.

Each engine's `schedule()` reads the numbers from the same code that builds its
pruner or scheduler, and says plainly when it cannot run the sweep at all.
"""

from __future__ import annotations

from typing import Any

from hpo import distributions
from hpo.backends import base
from hpo.errors import HpoError
from hpo.plan import Options
from hpo.spec import Spec


def schedules(spec: Spec, options: Options | None = None) -> list[base.Schedule]:
    out = []
    for name in base.engines():
        try:
            out.append(base.get(name).schedule(spec, options or Options()))
        except HpoError as exc:  # e.g. the engine's package is not installed
            out.append(base.Schedule(name, problem=str(exc), lines=(f"{name}: {exc}",)))
    return out


def explain(spec: Spec, options: Options | None = None) -> str:
    goals = (f"metrics {', '.join(f'{n} ({g})' for n, g in spec.objectives)} (a Pareto front)" if spec.multi
             else f"metric {spec.metric} ({spec.goal})")
    head = f"{spec.name or 'sweep'}: method {spec.method}, {goals}, {len(spec.params)} parameters"
    lines = [head]
    if spec.method == "bayes" and not spec.multi:  # what proposes the trials (W&B's own GP: --backend wandb)
        tpe = distributions.sampler(spec)
        lines.append(f"search: Optuna TPESampler(constant_liar={tpe._constant_liar}, "  # noqa: SLF001
                     f"multivariate={tpe._multivariate}) on optuna and ray (bench/search_quality.py chose it); "  # noqa: SLF001
                     "W&B's Gaussian process on wandb")
    if spec.hyperband is None:
        lines.append("no early_terminate: every trial runs all its epochs on every engine.")
    for s in schedules(spec, options):
        lines += s.lines
    return "\n".join(lines)


def as_json(spec: Spec, options: Options | None = None) -> dict[str, Any]:
    return {s.engine: {"runs": s.runs, "problem": s.problem, "rungs": list(s.rungs),
                       "stops_only_at_rungs": s.stops_only_at_rungs, "lines": list(s.lines)}
            for s in schedules(spec, options)}
