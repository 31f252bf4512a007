"""`hpo report`: one self-contained HTML file with the plots people look at, from the sweep's Optuna study.

Every engine's trials are in the study (Optuna's own, or the mirror of Ray's and W&B's), so one
reader serves all three. Plotly draws the figures: it is what `optuna.visualization` and
optuna-dashboard use, and its figures are interactive (hover a point for its trial). plotly.js is
written into the file (about 4.8 MB), so the report opens on a machine with no network.
"""

from __future__ import annotations

import html
import json
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import keys, report_read, storage
from hpo.plan import Options
from hpo.spec import Spec

COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#ff7f0e", "FAIL": "#d62728", "RUNNING": "#7f7f7f",
           "WAITING": "#bbbbbb"}
IMPORTANCE = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, Optuna 5's default)"
# PED-ANOVA compares the top 10 % of trials with all of them: below 10 complete trials that top is one trial,
# and its "importance" is that trial's parameters. Not drawn then (nor is optuna.importance, 1-2 s, loaded).
IMPORTANCE_MIN = 10
# Past this many trials a figure draws the best half of them and an even spread of the rest (a 100,000-trial
# study stays a report of a few MB that opens and is written in seconds); the note under it says so.
CAP = 1000
TIMELINE_CAP = 2000  # bars, each a trial, the latest ones


def capped(trials: list[FrozenTrial], direction: str, cap: int | None = None) -> list[FrozenTrial]:
    """At most `cap` (CAP) trials in number order: the best cap/2 by their value (or last report) and the others
    spread evenly over the rest; all of them when there are not more."""
    cap = CAP if cap is None else cap
    if len(trials) <= cap:
        return trials
    valued = [t for t in trials if _last(t) is not None]
    ranked = sorted(valued, key=_last, reverse=direction == "maximize")
    keep = {t.number for t in ranked[:cap // 2]}
    rest = [t for t in trials if t.number not in keep]
    step = len(rest) / (cap - len(keep))
    keep |= {rest[int(i * step)].number for i in range(cap - len(keep))}
    return [t for t in trials if t.number in keep]


class _Drawn(optuna.Study):
    """The study as Optuna's plots see it: these trials (read whole), with their own numbers (`add_trials` into a
    new study would number them again). The plots and importances ask `get_trials` (and `trials`, through it)."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        super().__init__(study.study_name, study._storage)  # noqa: SLF001 - the same study: names, directions
        self._drawn = trials

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:  # noqa: ARG002
        return [t for t in self._drawn if states is None or t.state in states]


def _last(t: FrozenTrial) -> float | None:
    """A trial's value: its objective when complete, else where it stopped (its last report)."""
    if t.values is not None:
        return storage.primary(t)
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def history(trials: list[FrozenTrial], metric: str, direction: str) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        ts = [t for t in trials if t.state.name == state and _last(t) is not None]
        fig.add_scatter(x=[t.number for t in ts], y=[_last(t) for t in ts], mode="markers", name=state.lower(),
                        marker={"color": COLOURS[state]}, text=[f"trial {t.number}" for t in ts])
    best, xs, ys = None, [], []
    pick = max if direction == "maximize" else min
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.values is not None:
            best = storage.primary(t) if best is None else pick(best, storage.primary(t))
            xs.append(t.number)
            ys.append(best)
    fig.add_scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "#2ca02c"}, name="best so far")
    fig.update_layout(title="Optimisation history (pruned: the value where the trial stopped)",
                      xaxis_title="trial", yaxis_title=metric)
    return fig


def curves(trials: list[FrozenTrial], metric: str, rungs: list[int]) -> Any:
    """One line per trial, drawn as one trace per state (gaps between trials): small at 1,000s of trials."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        xs: list[Any] = []
        ys: list[Any] = []
        names: list[Any] = []
        for t in trials:
            if t.state.name != state or not t.intermediate_values:
                continue
            steps = sorted(t.intermediate_values)
            xs += [*steps, None]
            ys += [*(t.intermediate_values[s] for s in steps), None]
            names += [t.number] * len(steps) + [None]
        if xs:
            fig.add_scatter(x=xs, y=ys, mode="lines", name=state.lower(), customdata=names,
                            line={"color": COLOURS[state], "width": 1}, connectgaps=False,
                            hovertemplate="trial %{customdata}<br>step %{x}<br>%{y}<extra></extra>")
    for r in rungs:
        fig.add_vline(x=r, line_dash="dash", line_color="#999", annotation_text=f"rung {r}")
    fig.update_layout(title="Learning curves (dashed: the engine's rungs, as `hpo explain` prints them)",
                      xaxis_title="step (epoch)", yaxis_title=metric)
    return fig


def timeline(trials: list[FrozenTrial]) -> tuple[Any, dict[str, float]]:
    """Which trial ran on which worker and when, and each worker's busy fraction of the sweep."""
    import plotly.graph_objects as go

    done = [t for t in trials if t.datetime_start and t.datetime_complete]
    busy: dict[str, float] = {}
    fig = go.Figure()
    if not done:
        return fig, busy
    start = min(t.datetime_start for t in done)
    span = max((max(t.datetime_complete for t in done) - start).total_seconds(), 1e-9)
    for t in done:
        slot = str(t.user_attrs.get(keys.WORKER, "?"))
        busy[slot] = busy.get(slot, 0.0) + (t.datetime_complete - t.datetime_start).total_seconds() / span
    shown = sorted(done, key=lambda t: t.datetime_start)[-TIMELINE_CAP:]  # busy counts all; bars: the last ones
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        ts = [t for t in shown if t.state.name == state]
        if not ts:
            continue
        fig.add_bar(orientation="h", name=state.lower(), marker={"color": COLOURS[state]},
                    y=[f"{t.user_attrs.get(keys.WORKER, '?')} ({busy[str(t.user_attrs.get(keys.WORKER, '?'))]:.0%} busy)"
                       for t in ts],
                    base=[(t.datetime_start - start).total_seconds() for t in ts],
                    x=[(t.datetime_complete - t.datetime_start).total_seconds() for t in ts],
                    text=[f"trial {t.number}" for t in ts], textposition="inside", insidetextanchor="middle",
                    hovertemplate="%{text}<br>%{base:.1f}s + %{x:.1f}s")
    # a label that does not fit its bar is hidden, not drawn over its neighbours (hover still names the trial)
    fig.update_layout(uniformtext={"minsize": 9, "mode": "hide"})
    fig.update_layout(title="Timeline per worker slot (gaps are idle time)", barmode="overlay",
                      xaxis_title="seconds since the first trial started", yaxis={"categoryorder": "category ascending"})
    return fig, busy


def _cell(c: Any) -> str:
    """A table cell: text, escaped; a (text, url) pair is a link."""
    if isinstance(c, tuple):
        text, url = c
        return f'<a href="{html.escape(url)}">{html.escape(str(text))}</a>' if url else html.escape(str(text))
    return html.escape(f"{c:.6g}" if isinstance(c, float) else str(c))


def varied(trials: list[FrozenTrial]) -> list[str]:
    """The parameters that take more than one value among these trials (a `value:` constant says nothing in a
    plot: it is left out of the parallel coordinates, the importances and the top-trials table)."""
    first: dict[str, Any] = {}
    varies: dict[str, bool] = {}
    for t in trials:
        for k, v in t.params.items():
            if k.endswith("~u") or varies.get(k):  # a sampled uniform behind a value (trainer_params); known
                continue
            if k not in first:
                first[k], varies[k] = v, False
            elif v != first[k]:
                varies[k] = True
    return [k for k, v in varies.items() if v]


def run_link(attrs: dict[str, Any], run_id: str) -> str | None:
    """The MLflow UI's page of a run (`attrs`: the study's user attributes): on the tracking server, or `mlflow ui`'s
    default address for a local store."""
    uri, exp = attrs.get(keys.TRACKING_URI, ""), attrs.get(keys.EXPERIMENT_ID)
    if not run_id or exp is None:
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp}/runs/{run_id}"


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>")


def build(study: optuna.Study, spec: Spec, rungs: list[int], read: report_read.Trials | None = None) -> str:
    """The report's HTML: figures with plotly.js inline, then the top trials and the failures. Every trial is read
    lean, those drawn whole (hpo.report_read)."""
    import plotly.io as pio
    from optuna import visualization as vis

    read = read or report_read.Trials(study)
    trials = read.all
    metric, direction = spec.metric or "value", spec.direction
    drawn = read.whole(capped(trials, direction))
    few = (f"{len(drawn):,} of {len(trials):,} trials drawn: the best {CAP // 2} and an even spread of the rest"
           if len(drawn) < len(trials) else "")
    figs: list[tuple[str, Any, str]] = [("history", history(trials, metric, direction), ""),
                                        ("curves", curves(drawn, metric, rungs), few)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    plotted = read.whole(capped(complete, direction))
    study_drawn = _Drawn(study, plotted)  # Optuna's plots draw a study: one of the trials shown
    few_done = (f"{len(plotted):,} of {len(complete):,} complete trials: the best {CAP // 2} and an even spread of "
                "the rest. " if len(plotted) < len(complete) else "")
    notes = []
    plots = [("parallel", vis.plot_parallel_coordinate, few_done),
             ("importance", vis.plot_param_importances, f"{few_done}Importance evaluator: {IMPORTANCE}.")]
    shown = varied(plotted)  # no constants (among the trials drawn: a capped study varies no less)
    on: dict[str, dict[str, Any]] = {"parallel": {"params": shown, "target_name": metric},
                                     "importance": {"params": shown, "target_name": metric},
                                     "pareto": {"target_names": spec.metric_names}}
    if spec.multi:  # the front first; the other plots show the first objective
        plots.insert(0, ("pareto", vis.plot_pareto_front,
                         f"{few_done}Pareto front: the trials no other trial beats on every objective."))
        sign = -1.0 if direction == "maximize" else 1.0  # PED-ANOVA ranks what makes a custom target low
        on["parallel"] = {"params": shown, "target": storage.primary, "target_name": metric}
        on["importance"] = {"params": shown, "target": lambda t: sign * storage.primary(t), "target_name": metric}
    for name, make, why in plots:
        try:
            if len(complete) < 2:
                raise ValueError("fewer than 2 complete trials")
            if name in ("parallel", "importance") and not shown:
                raise ValueError("no parameter took more than one value")
            if name == "importance" and len(complete) < IMPORTANCE_MIN:
                raise ValueError(f"{len(complete)} complete trials; PED-ANOVA compares the top 10 % with the rest, "
                                 f"which takes at least {IMPORTANCE_MIN}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make(study_drawn, **on[name])
                if name == "importance":  # Optuna titles it "Hyperparameter Importance" whatever the target
                    fig.update_layout(xaxis_title=f"importance for {metric}")
                figs.append((name, fig, why))
        except Exception as exc:  # noqa: BLE001 - e.g. one parameter value only: say so, keep the rest
            notes.append(f"{name}: not drawn ({exc})")
    tl, busy = timeline(trials)
    last = f". The last {TIMELINE_CAP:,} of {len(trials):,} trials are drawn." if len(trials) > TIMELINE_CAP else ""
    figs.append(("timeline", tl, "Busy: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(busy.items())) + last))
    parts, first = [], True
    for name, fig, why in figs:
        fig.update_layout(height=420, margin={"l": 60, "r": 20, "t": 50, "b": 50})
        parts.append(f'<section id="{name}">'
                     + pio.to_html(fig, full_html=False, include_plotlyjs=first, div_id=f"fig-{name}")
                     + (f"<p>{html.escape(why)}</p>" if why else "") + "</section>")
        first = False
    best = read.whole(sorted(complete, key=storage.primary, reverse=direction == "maximize")[:10])
    columns = shown or sorted({k for t in best for k in storage.trainer_params(t)})
    attrs = study.user_attrs
    top = _table([[t.number, storage.primary(t), *(storage.trainer_params(t).get(k, "") for k in columns),
                   (t.user_attrs.get(keys.MLFLOW_RUN_ID, ""), run_link(attrs, t.user_attrs.get(keys.MLFLOW_RUN_ID, "")))]
                  for t in best], ["trial", metric, *columns, "MLflow run"])
    failed = [t for t in trials if t.state == TrialState.FAIL]
    fails = _table([[t.number, t.user_attrs.get(keys.REASON, ""), str(t.user_attrs.get(keys.ERROR, ""))[:300]]
                    for t in failed], ["trial", "reason", "error"]) if failed else "<p>None.</p>"
    c = storage.count(trials)
    title = html.escape(study.study_name)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}: hpo report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}}
section{{margin-bottom:2em}}</style></head><body>
<h1>{title}</h1>
<p>{html.escape(spec.method)} search, {html.escape(metric)} ({html.escape(spec.goal)});
{c.complete} complete, {c.pruned} pruned, {c.failed} failed, {c.retried} retried, {c.interrupted} interrupted; written
{datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>
{''.join(f'<p>{html.escape(n)}</p>' for n in notes)}
{''.join(parts)}
<h2>Top trials</h2>{top}
<h2>Failed trials</h2>{fails}
</body></html>
"""


def figure(page: str, name: str) -> dict[str, Any]:
    """A figure's data and layout back out of a report (for checks): `name` as in the section ids."""
    at = page.index(f'"fig-{name}",')
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(page, page.index("[", at))
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return {"data": data, "layout": layout}


def rungs_for(study: optuna.Study, spec: Spec) -> list[int]:
    """The rungs of the engine the sweep ran on, with the options it recorded."""
    from hpo.backends import base

    engine = study.user_attrs.get(keys.BACKEND, "optuna")
    options = Options(optuna_pruner=study.user_attrs.get(keys.OPTUNA_PRUNER, "sha"))
    try:
        return list(base.get(engine).schedule(spec, options).rungs)
    except Exception:  # noqa: BLE001 - an engine whose package is missing here: no rungs drawn
        return []


def write(study: optuna.Study, spec: Spec, folder: Path) -> Path:
    path = folder / "report.html"
    folder.mkdir(parents=True, exist_ok=True)
    text = build(study, spec, rungs_for(study, spec))
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    return path


def write_for(study: optuna.Study, fallback: Spec, folder: Path) -> Path:
    """`hpo report`: the study's own recorded spec (else `fallback`, the sweep file's), into the sweep's folder."""
    from hpo import spec as specmod

    raw = study.user_attrs.get(keys.SPEC)
    return write(study, specmod.from_dict(json.loads(raw)) if raw else fallback, folder)
