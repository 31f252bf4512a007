"""Search quality: does hpo find good hyperparameters as fast as the best tools? (issue 25)

Tasks (bench/quality/surrogates.py): YAHPO Gym's LCBench surrogate (any of its 34 OpenML task ids, through
onnxruntime on YAHPO's model.onnx; data from $YAHPO_DATA or --yahpo-data, default ../shared/data/yahpo_data)
and `hartmann6`, a synthetic multi-fidelity function that needs no data.

Contenders, each through its own library (bench/quality/contenders.py), in an event-driven simulation of k
workers on the simulated-time axis (bench/quality/sim.py; nothing sleeps): random, random_sha, optuna_tpe_hb,
optuna_tpe_sha (Optuna 5's TPESampler() defaults, constant_liar=True, multivariate=True: hpo's mapping of
bayes + hyperband until this benchmark), TPE variants (tpe_indep_sha, multivariate=False: hpo's mapping since), wandb_bayes_hb (sweeps 0.2.0), ray_asha_optuna
(Ray Tune's ASHA + OptunaSearch objects), dehb (DEHB 0.1.1).
And hpo itself, as users run it: `hpo run bench/quality/<task>.yaml --trainer sq_trainer:train` with
`--backend optuna` (hpo_optuna, the default), `--optuna-pruner hyperband` (hpo_optuna_hb), `--backend ray`
(hpo_ray), `--backend wandb --offline` (hpo_wandb): real workers, real storage, MLflow child runs.

Budget: `--trainings` (30) full trainings' worth of epochs (30 x 52 on LCBench) and of simulated time
(30 x the task's mean full-training seconds / workers); a run goes on until both are spent. The best
val_accuracy reported so far (any trial, any epoch) is recorded at 1..100 % of each budget; regret is the
task's best (the larger of 5,000 random configurations at every epoch and anything a run found) minus it.

    python bench/search_quality.py                      # the full protocol (bench/RESULTS.md)
    python bench/search_quality.py --tasks lcbench:167104 --seeds 20     # any other LCBench task
    python bench/search_quality.py --smoke --out /tmp/sq.json            # 1 task, 2 seeds, tiny budget
    python bench/search_quality.py --analyze bench/results/search_quality.json   # tables + plots again
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
QUALITY = HERE / "quality"
sys.path.insert(0, str(QUALITY))
sys.path.insert(0, str(HERE))

import surrogates  # noqa: E402

ROOT = HERE.parent
GRID = np.arange(1, 101) / 100.0  # budget fractions recorded
POINTS = (0.10, 0.25, 0.50, 1.00)
DEFAULT_TASKS = ("hartmann6", "lcbench:3945", "lcbench:7593", "lcbench:34539", "lcbench:126026",
                 "lcbench:146212", "lcbench:189909")
HPO_VARIANTS = {  # name -> extra `hpo run` arguments
    "hpo_optuna": [],
    "hpo_optuna_hb": ["--optuna-pruner", "hyperband"],
    "hpo_ray": ["--backend", "ray"],
    "hpo_wandb": ["--backend", "wandb", "--offline"],
}
PROXY = "tpe_indep_sha"  # hpo's default mapping (hpo.distributions.sampler), run in-library: the same objects
HEADLINE = "hpo_optuna"


# ---------------------------------------------------------------- sweep files

def sweep_text(t: surrogates.Task, method: str = "bayes", extra: dict[str, Any] | None = None) -> str:
    """The task's sweep.yaml (W&B format); `extra` adds constants (the harness's log folder, ...)."""
    lines = [f"name: sq-{t.slug.replace('_', '-')}", f"method: {method}",
             "metric: {name: val_accuracy, goal: maximize}",
             f"early_terminate: {{type: hyperband, min_iter: {t.min_iter}, eta: 3}}", "parameters:"]
    for p in t.space:
        body = ", ".join(f"{k}: {v}" for k, v in p.wandb().items())
        lines.append(f"  {p.name}: {{{body}}}")
    lines.append(f"  epochs: {{value: {t.max_epochs}}}")
    lines.append(f"  sq_task: {{value: '{t.name}'}}")
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {{value: {json.dumps(v)}}}")
    return "\n".join(lines) + "\n"


def write_sweeps(tasks: list[str], data: str | None) -> None:
    for name in tasks:
        t = surrogates.task(name, data)
        (QUALITY / f"{t.slug}.yaml").write_text(
            "# bench/search_quality.py runs this with --trainer sq_trainer:train (PYTHONPATH=bench/quality);\n"
            "# it adds sq_log / sq_budget / sq_sleep / yahpo_data constants per run.\n" + sweep_text(t))


# ---------------------------------------------------------------- scoring

def incumbents(epochs: np.ndarray, times: np.ndarray, vals: np.ndarray, e_budget: float,
               t_budget: float) -> tuple[list[float | None], list[float | None]]:
    """Best value so far at each GRID fraction of the epoch budget and of the time budget."""
    out = []
    for axis, budget in ((epochs, e_budget), (times, t_budget)):
        order = np.argsort(axis, kind="stable")
        ax, best = axis[order], np.maximum.accumulate(vals[order]) if len(vals) else vals
        row: list[float | None] = []
        for f in GRID:
            i = np.searchsorted(ax, f * budget * (1 + 1e-9), side="right")
            row.append(float(best[i - 1]) if i > 0 else None)
        out.append(row)
    return out[0], out[1]


def budgets(t: surrogates.Task, ref: dict[str, float], trainings: float, workers: int) -> tuple[float, float]:
    return trainings * t.max_epochs, trainings * ref["full_time"] / workers


# ---------------------------------------------------------------- in-library runs

def run_in_library(job: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)
    import contenders
    import sim

    t = surrogates.task(job["task"], job["data"])
    start = time.perf_counter()
    c = contenders.IN_LIBRARY[job["contender"]](t, job["seed"])
    r = sim.simulate(t, c, job["workers"], job["e_budget"], job["t_budget"])
    best_e, best_t = incumbents(r["epochs"], r["time"], r["val"], job["e_budget"], job["t_budget"])
    return {**{k: job[k] for k in ("task", "contender", "workers", "seed")}, "kind": "in-library",
            "best_e": best_e, "best_t": best_t, "found": float(r["val"].max()), "trials": r["trials"],
            "used_epochs": r["used_epochs"], "clock": r["clock"], "cpu_s": time.perf_counter() - start}


# ---------------------------------------------------------------- hpo's own runs

def hpo_observations(folder: Path, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The trials the trainer logged, placed on k simulated workers in the order they really started
    (each goes to the worker whose simulated clock is earliest: exact for one worker; for several the order
    is the one the real run gave, with sq_sleep making real order follow predicted time)."""
    recs = []
    for f in folder.glob("*.jsonl"):
        recs.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    recs.sort(key=lambda r: r["start"])
    clocks = [0.0] * workers
    ends, vals = [], []
    for r in recs:
        w = int(np.argmin(clocks))
        t0 = clocks[w]
        cum = t0 + np.cumsum(r["dt"]) if r["dt"] else np.array([])
        ends.extend(cum.tolist())
        vals.extend(r["acc"])
        clocks[w] = float(cum[-1]) if len(cum) else t0
    times, vals_a = np.asarray(ends), np.asarray(vals)
    order = np.argsort(times, kind="stable")
    epochs = np.empty(len(times), dtype=np.int64)
    epochs[order] = np.arange(1, len(times) + 1)
    return epochs, times, vals_a, len(recs)


def storage_trials(sweep_dir: Path) -> int:
    """Trials recorded in the sweep's Optuna storage (every engine mirrors its trials there)."""
    import optuna

    sys.path.insert(0, str(ROOT))
    from hpo.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_storage(str(sweep_dir / "optuna.log"))
    study = optuna.load_study(study_name=sweep_dir.name, storage=store)
    return len(study.get_trials(deepcopy=False))


def run_hpo(job: dict[str, Any]) -> dict[str, Any]:
    t = surrogates.task(job["task"], job["data"])
    tmp = Path(tempfile.mkdtemp(prefix="sq-hpo-"))
    log = tmp / "log"
    k = job["workers"]
    sleep = 0.0
    if k > 1:  # asynchronous order matters: sleep a fixed fraction of the predicted time
        sleep = job["sleep_s"] / job["t_budget"]
    extra = {"sq_log": str(log), "sq_budget": int(job["e_budget"] * 1.05),
             "sq_seconds": round(job["t_budget"] * k * 1.05, 1), "sq_sleep": sleep,
             "yahpo_data": str(surrogates.data_dir(job["data"]))}
    sweep = tmp / "sweep.yaml"
    sweep.write_text(sweep_text(t, extra=extra))
    argv = [sys.executable, "-m", "hpo", "run", str(sweep), "--root", str(tmp / "runs"), "--trials",
            str(job["trials"]), "--workers", str(k), "--gpus", "none", "--trainer", "sq_trainer:train",
            "--no-progress", "--no-report", "--keep-models", "0", *HPO_VARIANTS[job["contender"]]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(QUALITY), str(ROOT)]), "HPO_RAY_NUM_CPUS": str(k),
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RAY_DEDUP_LOGS": "0"}
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=job.get("timeout", 1200))
    wall = time.perf_counter() - start
    base = {**{k2: job[k2] for k2 in ("task", "contender", "workers", "seed")}, "kind": "hpo", "wall_s": wall,
            "rc": out.returncode}
    try:
        if out.returncode != 0 and not log.exists():
            return {**base, "error": (out.stderr or out.stdout)[-2000:]}
        e, tm, v, n = hpo_observations(log, k)
        best_e, best_t = incumbents(e, tm, v, job["e_budget"], job["t_budget"])
        sweep_dir = next(p for p in (tmp / "runs").iterdir() if p.is_dir())
        return {**base, "best_e": best_e, "best_t": best_t, "found": float(v.max()), "trials": n,
                "used_epochs": int(len(v)), "clock": float(tm.max()), "storage_trials": storage_trials(sweep_dir),
                "mlflow_db": (sweep_dir / "mlflow.db").exists(), "sleep_fraction": sleep,
                "stderr_tail": out.stderr[-500:] if out.returncode else ""}
    except Exception:  # noqa: BLE001 - the record says what broke; the benchmark goes on
        return {**base, "error": traceback.format_exc()[-2000:] + (out.stderr or "")[-1500:]}
    finally:
        if not job.get("keep"):
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- analysis

def regrets(run: dict[str, Any], best: float, fill: float, axis: str) -> np.ndarray:
    row = np.array([fill if b is None else b for b in run["best_" + axis]], dtype=float)
    return np.maximum(best - row, 0.0)


def boot_ci(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    if len(x) < 2:
        return float("nan"), float("nan")
    means = rng.choice(x, size=(n, len(x)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def analyze(res: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    import contenders

    known = set(contenders.IN_LIBRARY) | set(HPO_VARIANTS)
    runs = [r for r in res["runs"] if "best_e" in r and r["contender"] in known and r["task"] in res["reference"]
            and not (r["workers"] == 1 and r["contender"] in contenders.ONLY_PARALLEL)]
    tasks = sorted({r["task"] for r in runs})
    best = {}
    for tname in tasks:
        found = [r["found"] for r in runs if r["task"] == tname]
        best[tname] = max([res["reference"][tname]["best"], *found])
    cells: dict[str, Any] = {}
    idx = {p: int(round(p * 100)) - 1 for p in POINTS}
    for r in runs:
        ref = res["reference"][r["task"]]
        fill = ref["median_acc"]
        key = f'{r["task"]}|{r["workers"]}|{r["contender"]}'
        c = cells.setdefault(key, {"e": [], "t": []})
        for axis in ("e", "t"):
            c[axis].append(regrets(r, best[r["task"]], fill, axis))
    table: dict[str, Any] = {}
    for key, c in cells.items():
        tname, k, name = key.split("|")
        row: dict[str, Any] = {"task": tname, "workers": int(k), "contender": name, "n": len(c["e"])}
        for axis in ("e", "t"):
            m = np.vstack(c[axis])
            for p in POINTS:
                x = m[:, idx[p]]
                row[f"{axis}{int(p * 100)}"] = float(x.mean())
                row[f"{axis}{int(p * 100)}_ci"] = boot_ci(x, rng)
            auc = m.mean(axis=1)
            row[f"{axis}_auc"], row[f"{axis}_auc_ci"] = float(auc.mean()), boot_ci(auc, rng)
            row[f"{axis}_log100"] = float(np.log10(np.maximum(m[:, -1], 1e-3)).mean())
            row[f"_{axis}"] = m
        table[key] = row
    metrics = [f"{a}{int(p * 100)}" for a in ("e", "t") for p in POINTS] + ["e_auc", "t_auc"]
    ranks = {"in_library": _ranks(table, tasks, metrics, lambda n: not n.startswith("hpo_")),
             "with_hpo": _ranks(table, tasks, metrics, lambda n: True)}
    # regret normalised per task (0: the task's best; 1: a random configuration's median), pooled over tasks,
    # with a bootstrap CI that resamples the seeds within each task
    pooled: dict[str, Any] = {}
    for scope, keep in (("in_library", lambda n: not n.startswith("hpo_")), ("with_hpo", lambda n: True)):
        for k in sorted({r["workers"] for r in table.values()}):
            names = sorted({r["contender"] for r in table.values() if r["workers"] == k and keep(r["contender"])})
            common = [t for t in tasks if all(f"{t}|{k}|{n}" in table for n in names)]
            for n in names:
                row: dict[str, Any] = {"tasks": len(common)}
                for m in metrics:
                    per_task = []
                    for tname in common:
                        scale = max(best[tname] - res["reference"][tname]["median_acc"], 1e-6)
                        cell = table[f"{tname}|{k}|{n}"]["_" + m[0]]
                        x = cell.mean(axis=1) if m.endswith("auc") else cell[:, idx[float(m[1:]) / 100]]
                        per_task.append(x / scale)
                    if not per_task:
                        continue
                    boots = np.mean([rng.choice(x, (1000, len(x))).mean(axis=1) for x in per_task], axis=0)
                    row[m] = float(np.mean([x.mean() for x in per_task]))
                    row[m + "_ci"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
                pooled[f"{scope}|{k}|{n}"] = row
    # better / tied / worse than the headline (hpo default; in-library proxy where hpo did not run)
    versus: dict[str, Any] = {}
    for ref_name in (PROXY, HEADLINE):
        for key, row in table.items():
            tname, k, name = key.split("|")
            base = table.get(f"{tname}|{k}|{ref_name}")
            if base is None or name == ref_name:
                continue
            for axis in ("e", "t"):
                for p in (0.25, 0.5, 1.0):
                    a, b = base[f"_{axis}"][:, idx[p]], row[f"_{axis}"][:, idx[p]]
                    if len(a) < 2 or len(b) < 2:
                        continue
                    diffs = (rng.choice(b, (2000, len(b))).mean(1) - rng.choice(a, (2000, len(a))).mean(1))
                    lo, hi = np.percentile(diffs, [2.5, 97.5])
                    verdict = "tied" if lo <= 0 <= hi else ("worse" if lo > 0 else "better")  # name vs base
                    v = versus.setdefault(f"{ref_name}|{k}|{name}|{axis}{int(p * 100)}",
                                          {"better": 0, "tied": 0, "worse": 0, "diff": []})
                    v[verdict] += 1
                    scale = max(best[tname] - res["reference"][tname]["median_acc"], 1e-6)
                    v["diff"].append(float(b.mean() - a.mean()) / scale)
    for v in versus.values():
        v["mean_diff"] = float(np.mean(v.pop("diff")))
    clean = {k: {kk: vv for kk, vv in row.items() if not kk.startswith("_")} for k, row in table.items()}
    return {"task_best": best, "table": clean, "ranks": ranks, "pooled": pooled, "versus": versus, "_table": table}


def _ranks(table: dict[str, Any], tasks: list[str], metrics: list[str], keep: Any) -> dict[str, Any]:
    """Average rank across the tasks on which every kept contender ran (per workers and metric)."""
    ranks: dict[str, Any] = {}
    for k in sorted({r["workers"] for r in table.values()}):
        names = sorted({r["contender"] for r in table.values() if r["workers"] == k and keep(r["contender"])})
        for metric in metrics:
            per: dict[str, list[float]] = {n: [] for n in names}
            for tname in tasks:
                vals = {n: table[f"{tname}|{k}|{n}"][metric] for n in names if f"{tname}|{k}|{n}" in table}
                if len(vals) < len(names):
                    continue
                order = sorted(vals.values())
                for n, v in vals.items():
                    lo, hi = order.index(v), len(order) - 1 - order[::-1].index(v)
                    per[n].append((lo + hi) / 2 + 1)
            for n in names:
                if per[n]:
                    ranks.setdefault(f"{k}|{n}", {})[metric] = float(np.mean(per[n]))
                    ranks[f"{k}|{n}"]["tasks"] = len(per[n])
    return ranks


def fmt_ci(row: dict[str, Any], key: str) -> str:
    lo, hi = row[key + "_ci"]
    return f"{row[key]:.3f}" if np.isnan(lo) else f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def report(res: dict[str, Any], an: dict[str, Any]) -> str:
    """Markdown: average ranks, then per-task regret tables."""
    out = []
    table, ranks = an["table"], an["ranks"]
    ks = sorted({r["workers"] for r in table.values()})
    pooled = an["pooled"]
    for scope, title in (("in_library", "in-library contenders, every task"),
                         ("with_hpo", "with hpo's own runs, on the tasks hpo ran")):
        for k in ks:
            rk = ranks[scope]
            names = sorted({n.split("|")[1] for n in rk if n.startswith(f"{k}|")},
                           key=lambda n: rk[f"{k}|{n}"].get("e_auc", 99))
            if not names:
                continue
            out.append(f"\n**{title}, {k} worker{'s' if k > 1 else ''}**: average rank (1 = best) and regret "
                       "normalised per task (0 = the task's best, 1 = a random configuration's median), mean over "
                       "tasks [95 % bootstrap CI]\n")
            out.append("| contender | tasks | rank e25 | e50 | e100 | eAUC | t25 | t50 | t100 | tAUC | "
                       "norm. regret e25 | e50 | e100 | t50 | t100 |")
            out.append("|---|---|" + "---|" * 13)
            for n in names:
                r, p = rk[f"{k}|{n}"], pooled.get(f"{scope}|{k}|{n}", {})
                cols = [r.get(m, float("nan")) for m in ("e25", "e50", "e100", "e_auc", "t25", "t50", "t100", "t_auc")]
                pc = []
                for m in ("e25", "e50", "e100", "t50", "t100"):
                    if m in p:
                        lo, hi = p[m + "_ci"]
                        pc.append(f"{p[m]:.3f} [{lo:.3f}, {hi:.3f}]")
                    else:
                        pc.append("")
                out.append(f"| {n} | {r['tasks']} | " + " | ".join(f"{c:.2f}" for c in cols) + " | "
                           + " | ".join(pc) + " |")
    versus = an["versus"]
    for base in (PROXY, HEADLINE):
        for k in ks:
            keys = sorted({v.split("|")[2] for v in versus if v.startswith(f"{base}|{k}|")})
            if not keys:
                continue
            out.append(f"\n**Against `{base}`, {k} worker{'s' if k > 1 else ''}**: tasks on which the contender's "
                       "mean regret is lower / tied / higher (95 % bootstrap CI of the difference excludes 0 or not), "
                       "and the mean difference in normalised regret over tasks (negative: the contender is better)\n")
            out.append("| contender | epochs 25% | 50% | 100% | sim-time 25% | 50% | 100% |")
            out.append("|---|---|---|---|---|---|---|")
            for n in keys:
                cells = []
                for m in ("e25", "e50", "e100", "t25", "t50", "t100"):
                    v = versus.get(f"{base}|{k}|{n}|{m}")
                    cells.append("" if v is None else
                                 f"{v['better']}/{v['tied']}/{v['worse']} ({v['mean_diff']:+.3f})")
                out.append(f"| {n} | " + " | ".join(cells) + " |")
    tasks = sorted({r["task"] for r in table.values()})
    for tname in tasks:
        out.append(f"\n**{tname}** (best val_accuracy {an['task_best'][tname]:.3f}; mean regret in accuracy points "
                   "[95 % bootstrap CI])\n")
        out.append("| workers | contender | seeds | epochs 25% | epochs 50% | epochs 100% | sim-time 25% | "
                   "sim-time 50% | sim-time 100% | AUC (epochs) |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for k in ks:
            rows = sorted((r for r in table.values() if r["task"] == tname and r["workers"] == k),
                          key=lambda r: r["e_auc"])
            for r in rows:
                out.append(f"| {k} | {r['contender']} | {r['n']} | " + " | ".join(
                    fmt_ci(r, m) for m in ("e25", "e50", "e100", "t25", "t50", "t100", "e_auc")) + " |")
    return "\n".join(out) + "\n"


def plots(res: dict[str, Any], an: dict[str, Any], folder: Path) -> list[Path]:
    """Regret curves (mean over seeds, log scale), one panel per task: plotly HTML and a matplotlib PNG."""
    table = an["_table"]
    tasks = sorted({r["task"] for r in table.values()})
    ks = sorted({r["workers"] for r in table.values()})
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = sorted({r["contender"] for r in table.values()})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]
    colour = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    for axis, label in (("e", "epochs"), ("t", "simulated time")):
        fig = make_subplots(rows=len(ks), cols=len(tasks), subplot_titles=[f"{t} ({k}w)" for k in ks for t in tasks],
                            shared_xaxes=True)
        for i, k in enumerate(ks):
            for j, tname in enumerate(tasks):
                for n in names:
                    row = table.get(f"{tname}|{k}|{n}")
                    if row is None:
                        continue
                    y = np.maximum(row[f"_{axis}"].mean(axis=0), 1e-3)
                    fig.add_scatter(x=GRID * 100, y=y, mode="lines", name=n, legendgroup=n,
                                    showlegend=(i == 0 and j == 0), line={"color": colour[n],
                                                                          "width": 3 if n.startswith("hpo") else 1.5},
                                    row=i + 1, col=j + 1)
                fig.update_yaxes(type="log", row=i + 1, col=j + 1)
        fig.update_layout(title=f"Regret of best val_accuracy vs % of the {label} budget (mean over seeds)",
                          height=320 * len(ks), width=300 * len(tasks))
        p = folder / f"search_quality_regret_{axis}.html"
        p.write_text(fig.to_html(include_plotlyjs="cdn", full_html=True))
        made.append(p)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig2, axes = plt.subplots(len(ks) * 2, len(tasks), figsize=(3.2 * len(tasks), 2.8 * 2 * len(ks)),
                                  squeeze=False)
        for a_i, (axis, label) in enumerate((("e", "% epochs"), ("t", "% sim time"))):
            for i, k in enumerate(ks):
                for j, tname in enumerate(tasks):
                    ax = axes[a_i * len(ks) + i][j]
                    for n in names:
                        row = table.get(f"{tname}|{k}|{n}")
                        if row is None:
                            continue
                        ax.plot(GRID * 100, np.maximum(row[f"_{axis}"].mean(axis=0), 1e-3), color=colour[n],
                                lw=2.5 if n.startswith("hpo") else 1.0, label=n)
                    ax.set_yscale("log")
                    ax.set_title(f"{tname}, {k}w", fontsize=8)
                    ax.set_xlabel(label, fontsize=7)
                    ax.tick_params(labelsize=6)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig2.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7)
        fig2.tight_layout(rect=(0, 0.05, 1, 1))
        p = folder / "search_quality_regret.png"
        fig2.savefig(p, dpi=80)
        made.append(p)
        # the headline: regret normalised per task, mean over tasks, vs the budget (in-library: every task;
        # hpo's own runs: the tasks they ran, beside the in-library contenders on the same tasks)
        hpo_tasks = sorted({r["task"] for r in table.values() if r["contender"].startswith("hpo_")})
        scopes = [("every task", tasks, [n for n in names if not n.startswith("hpo_")])]
        if hpo_tasks:
            scopes.append((f"hpo's tasks ({', '.join(hpo_tasks)})", hpo_tasks, names))
        fig3, axes3 = plt.subplots(len(scopes) * len(ks), 2, figsize=(11, 3.6 * len(scopes) * len(ks)), squeeze=False)
        for s_i, (title, stasks, snames) in enumerate(scopes):
            for i, k in enumerate(ks):
                for a_i, (axis, label) in enumerate((("e", "% of the epoch budget"), ("t", "% of the sim-time budget"))):
                    ax = axes3[s_i * len(ks) + i][a_i]
                    for n in snames:
                        rows = [table.get(f"{t}|{k}|{n}") for t in stasks]
                        if any(r is None for r in rows):
                            continue
                        curve = np.mean([r[f"_{axis}"].mean(axis=0) / max(
                            an["task_best"][r["task"]] - res["reference"][r["task"]]["median_acc"], 1e-6)
                            for r in rows], axis=0)
                        ax.plot(GRID * 100, np.maximum(curve, 1e-4), color=colour[n], label=n,
                                lw=2.8 if n in (PROXY, HEADLINE) else 1.2,
                                ls="--" if n.startswith("hpo_") else "-")
                    ax.set_yscale("log")
                    ax.set_title(f"{title}, {k} worker(s)", fontsize=9)
                    ax.set_xlabel(label, fontsize=8)
                    ax.set_ylabel("normalised regret", fontsize=8)
                    ax.grid(alpha=0.3)
                    ax.legend(fontsize=6, ncol=2)
        fig3.tight_layout()
        p = folder / "search_quality_pooled.png"
        fig3.savefig(p, dpi=80)
        made.append(p)
    except ImportError:
        pass
    return made


def _rounded(x: Any) -> Any:
    """Floats to 4 decimals (accuracy points, seconds): the raw JSON stays a few MB."""
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="hartmann6 and/or lcbench:<OpenML id>, ...")
    ap.add_argument("--contenders", default=",".join(n for n in __import__("contenders").IN_LIBRARY),
                    help="in-library contenders (bench/quality/contenders.py); empty: none")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--slow-seeds", type=int, default=None,
                    help="seeds for wandb_bayes_hb (its GP costs ~20 s a run here; default: --seeds)")
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--trainings", type=float, default=30.0, help="budget: this many full trainings' worth")
    ap.add_argument("--hpo", default=",".join(HPO_VARIANTS), help="hpo's own runs (empty: none)")
    ap.add_argument("--hpo-tasks", default=None, help="tasks for hpo's own runs (default: --tasks)")
    ap.add_argument("--hpo-seeds", type=int, default=3, help="repetitions of each hpo run (unseeded)")
    ap.add_argument("--hpo-workers", default=None, help="workers for hpo's own runs (default: --workers)")
    ap.add_argument("--hpo-trials", type=int, default=None, help="--trials of each hpo run (default: from the "
                    "in-library proxy's trial count, x1.5)")
    ap.add_argument("--hpo-sleep", type=float, default=20.0, help="seconds of real sleep in a run with several "
                    "workers (a fixed fraction of the predicted time, so parallel trials end in a real order)")
    ap.add_argument("--jobs", type=int, default=2, help="in-library runs in parallel")
    ap.add_argument("--yahpo-data", default=None, help="folder holding lcbench/ (default: $YAHPO_DATA, else "
                    "../shared/data/yahpo_data)")
    ap.add_argument("--reference-n", type=int, default=5000)
    ap.add_argument("--out", default=str(HERE / "results" / "search_quality.json"))
    ap.add_argument("--partial", default=None, help="JSON lines of finished runs, appended as they end "
                    "(and read back: a rerun skips what is there)")
    ap.add_argument("--plots", default=str(QUALITY / "plots"))
    ap.add_argument("--smoke", action="store_true", help="1 task (hartmann6), 2 seeds, a tiny budget, every contender")
    ap.add_argument("--analyze", default=None, help="only tables and plots from this JSON")
    ap.add_argument("--write-sweeps", action="store_true", help="(re)write bench/quality/<task>.yaml and stop")
    a = ap.parse_args(argv)

    if a.analyze:
        res = json.loads(Path(a.analyze).read_text())
        an = analyze(res)
        print(report(res, an))
        for p in plots(res, an, Path(a.plots)):
            print("wrote", p)
        return 0
    if a.smoke:
        a.tasks, a.seeds, a.trainings, a.hpo_seeds, a.reference_n = "hartmann6", 2, 3.0, 1, 500
        a.hpo_workers = a.hpo_workers or "1"
        a.hpo_sleep, a.hpo_trials = 0.0, a.hpo_trials or 4
        a.jobs = 1  # one process imports the contenders' libraries once; hpo's own runs go beside it
    tasks = [surrogates.task(n, a.yahpo_data).name for n in a.tasks.split(",") if n]
    if a.write_sweeps:
        write_sweeps(tasks, a.yahpo_data)
        return 0
    workers = [int(x) for x in a.workers.split(",")]
    names = [n for n in a.contenders.split(",") if n]
    hpo_names = [n for n in a.hpo.split(",") if n]
    hpo_tasks = [surrogates.task(n, a.yahpo_data).name for n in (a.hpo_tasks or a.tasks).split(",") if n]
    hpo_workers = [int(x) for x in (a.hpo_workers or a.workers).split(",")]
    started = time.time()
    reference = {}
    for n in sorted(set(tasks) | set(hpo_tasks)):
        reference[n] = surrogates.reference(surrogates.task(n, a.yahpo_data), a.reference_n)
        print(f"reference {n}: {reference[n]}", flush=True)
    done: list[dict[str, Any]] = []
    if a.partial and Path(a.partial).exists():
        done = [json.loads(line) for line in Path(a.partial).read_text().splitlines() if line.strip()]
    have = {(r["task"], r["contender"], r["workers"], r["seed"]) for r in done}

    def record(r: dict[str, Any]) -> None:
        done.append(r)
        if a.partial:
            with open(a.partial, "a") as f:
                f.write(json.dumps(r) + "\n")

    jobs = []
    for tname in tasks:
        t = surrogates.task(tname, a.yahpo_data)
        for k in workers:
            e_b, t_b = budgets(t, reference[tname], a.trainings, k)
            for name in names:
                if k == 1 and name in __import__("contenders").ONLY_PARALLEL:
                    continue
                n_seeds = a.slow_seeds if (name == "wandb_bayes_hb" and a.slow_seeds is not None) else a.seeds
                for s in range(n_seeds):
                    if (tname, name, k, s) not in have:
                        jobs.append({"task": tname, "contender": name, "workers": k, "seed": s, "data": a.yahpo_data,
                                     "e_budget": e_b, "t_budget": t_b})
    # the slow contender last, seed by seed: a run cut short still has every task at the same seeds
    jobs.sort(key=lambda j: (j["contender"] == "wandb_bayes_hb", j["seed"] if j["contender"] == "wandb_bayes_hb"
                             else 0))
    print(f"{len(jobs)} in-library runs on {a.jobs} processes", flush=True)

    def hpo_jobs() -> list[dict[str, Any]]:
        out = []
        for tname in hpo_tasks:
            t = surrogates.task(tname, a.yahpo_data)
            for k in hpo_workers:
                e_b, t_b = budgets(t, reference[tname], a.trainings, k)
                proxy = [r["trials"] for r in done if r["task"] == tname and r["workers"] == k
                         and r["contender"] in (PROXY, "random_sha") and "trials" in r]
                trials = a.hpo_trials or int(1.5 * max(proxy)) if proxy else (a.hpo_trials or 60)
                for name in hpo_names:
                    for s in range(a.hpo_seeds):
                        if (tname, name, k, s) not in have:
                            out.append({"task": tname, "contender": name, "workers": k, "seed": s,
                                        "data": a.yahpo_data, "e_budget": e_b, "t_budget": t_b, "trials": trials,
                                        "sleep_s": a.hpo_sleep})
        return out

    def said(r: dict[str, Any]) -> None:
        record(r)
        print(f"  {r['contender']} {r['task']} {r['workers']}w #{r['seed']}: {r.get('wall_s', 0):.1f} s, trials "
              f"{r.get('trials')}, storage {r.get('storage_trials')}, found {r.get('found')}"
              + (f" ERROR {r['error'][-300:]}" if "error" in r else ""), flush=True)

    # --smoke: hpo's own runs (each a real `hpo run` that mostly waits on its engine's start: Ray, W&B) go at
    # once, beside the in-library runs; their --trials is fixed (--hpo-trials), not read from the proxy's runs.
    # The full protocol runs them one by one after the in-library runs, as before (timing and trial order).
    early = None
    if a.smoke and a.hpo_trials:
        from concurrent.futures import ThreadPoolExecutor

        early = ThreadPoolExecutor(2)
        # Ray's (the longest: mostly waiting on Ray's start) first
        futures = [early.submit(run_hpo, job) for job in sorted(hpo_jobs(), key=lambda j: j["contender"] != "hpo_ray")]
    if jobs:
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            for i, r in enumerate(pool.imap_unordered(run_in_library, jobs), 1):
                record(r)
                if i % 50 == 0 or i == len(jobs):
                    print(f"  {i}/{len(jobs)} in-library runs, {time.time() - started:.0f} s", flush=True)
    if early is not None:
        for f in futures:
            said(f.result())
        early.shutdown()
    else:
        for job in hpo_jobs():
            said(run_hpo(job))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "hpo"], cwd=ROOT, capture_output=True, text=True).stdout
    from importlib import metadata

    versions = {}
    for pkg in ("optuna", "ray", "sweeps", "wandb", "dehb", "onnxruntime", "numpy", "mlflow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    res = {"meta": {"machine": __import__("_common").machine(), "git": git.strip(), "hpo_modified": bool(dirty),
                    "versions": versions, "argv": sys.argv[1:] if argv is None else argv,
                    "seconds": time.time() - started, "trainings": a.trainings, "grid": GRID.tolist(),
                    "tasks": tasks, "workers": workers, "hpo_tasks": hpo_tasks, "hpo_workers": hpo_workers,
                    "hpo_seeds": a.hpo_seeds, "seeds": a.seeds, "slow_seeds": a.slow_seeds},
           "reference": reference, "runs": done}
    an = analyze(res)
    res["analysis"] = {k: v for k, v in an.items() if not k.startswith("_")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(_rounded(res), separators=(",", ":")))
    print(report(res, an))
    if a.plots and not a.smoke:
        for p in plots(res, an, Path(a.plots)):
            print("wrote", p)
    print(f"wrote {a.out} ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
