"""`hpo` command line: parse, call the library, map HpoError to one line and an exit code."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from hpo import keys, redact

redact.install()  # before anything (MLflow's logging) holds the raw streams

from hpo.backends.base import ENGINES  # noqa: E402
from hpo.errors import HpoError, SpecError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, `--flag: what is wrong`, exit code 2, like every other bad input
        found = re.match(r"argument ([-\w]+)(?:/[-\w]+)?: (.*)", message)
        raise UsageError(f"{found[1]}: {found[2]}" if found else f"{self.prog}: {message}")


def _sweep_args(p: argparse.ArgumentParser, with_run: bool = True) -> None:
    p.add_argument("sweep_file", nargs="?", default="sweep.yaml", help="W&B-format sweep config")
    p.add_argument("--space", help="use the parameters block of this file (search_spaces/NAME.yaml)")
    p.add_argument("--study", help="study / experiment name (default: the sweep's name)")
    p.add_argument("--storage", help="Optuna storage: journal file path or RDB URL (default: runs/NAME/optuna.log)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/NAME/mlflow.db)")
    p.add_argument("--root", default="runs", help="folder that holds one sub-folder per sweep (default: runs)")
    if with_run:
        p.add_argument("--backend", default="optuna", metavar="{" + ",".join(ENGINES) + ",...}",
                       help="the engine (default: optuna); other packages add engines (entry points `hpo.backends`)")
        p.add_argument("--trials", type=int, help="trial budget across all workers (default: run_cap, else 20)")
        p.add_argument("--gpus", help="auto | none | 0,2,3 (default: every GPU found, else CPU workers)")
        p.add_argument("--workers-per-gpu", default="1", metavar="N|auto|auto:CAP",
                       help="workers sharing each GPU (default 1); auto: start one, measure its first trials (NVML), then pack up to CAP (default 4) per GPU")
        p.add_argument("--workers", type=int, help="CPU workers when there is no GPU (default: cores, at most 4)")
        p.add_argument("--trainer", help="package.module:function with train(config, report) (default: hpo.train)")
        p.add_argument("--retries", type=int, default=0,
                       help="re-run a failed or killed trial's params up to N times")
        p.add_argument("--no-progress", action="store_true",
                       help="print no progress (default: a live table on a terminal, else one line per finished trial)")
        p.add_argument("--no-report", action="store_true",
                       help="do not write runs/NAME/report.html (nor attach it to the parent run) at the end")
        p.add_argument("--keep-models", type=int, metavar="K",
                       help="log the trained model of the best K complete trials so far as MLflow models "
                            "(default: 3; 0: none)")
        p.add_argument("--register", metavar="NAME",
                       help="at the end, register the best trial's model as a new version of NAME in the MLflow "
                            "Model Registry; the alias 'best' moves to it when it beats the holder")
        p.add_argument("--json", action="store_true",
                       help="end with one JSON line on stdout, also on a terminal (the default when stdout is not one)")
        p.add_argument("--ray-address", help="ray backend: an existing cluster (e.g. auto); default: a local Ray")
        p.add_argument("--ray-scheduler", default="asha", choices=["asha", "hyperband"],
                       help="ray backend: ASHA (default) or Ray's synchronous HyperBandScheduler")
        p.add_argument("--optuna-pruner", choices=["sha", "hyperband"],
                       help="optuna backend, early_terminate hyperband: W&B's one ladder as Optuna's "
                            "SuccessiveHalvingPruner (sha, default) or Optuna's bracketed HyperbandPruner")
        p.add_argument("--project", help="wandb backend: W&B project")
        p.add_argument("--entity", help="wandb backend: W&B entity (user or team)")
        p.add_argument("--offline", action="store_true",
                       help="wandb backend: no W&B server; run W&B's sweep algorithms here")


def _settings(a: argparse.Namespace):
    from hpo.plan import Settings

    return Settings(
        sweep_file=a.sweep_file, space=a.space, backend=getattr(a, "backend", "optuna"), study=a.study,
        storage=a.storage, tracking_uri=a.tracking_uri, root=a.root, trials=getattr(a, "trials", None),
        gpus=getattr(a, "gpus", None), workers_per_gpu=getattr(a, "workers_per_gpu", 1),
        workers=getattr(a, "workers", None), trainer=getattr(a, "trainer", None),
        retries=getattr(a, "retries", 0) or 0, progress=not getattr(a, "no_progress", False),
        options={k: getattr(a, k, None) for k in ("ray_address", "ray_scheduler", "optuna_pruner", "project",
                                                  "entity", "offline", "no_report", "keep_models", "register")},
    )


def cmd_run(a: argparse.Namespace) -> int:
    import time

    from hpo import api

    started = time.monotonic()
    plan = api.prepare(_settings(a))
    result = api.run(plan)
    if result.interrupted:
        print(f"hpo: interrupted at {result.counts.finished}/{plan.budget}; run the same command to resume",
              file=sys.stderr)
    if sys.stdout.isatty() and not a.json:  # a person reads this; scripts get the JSON line
        from hpo.summary import text

        print(text(plan, result, time.monotonic() - started, _dashboard_command(a)))
        if result.exit_code == 1:
            print(f"hpo: {result.failure_summary()}", file=sys.stderr)
        return result.exit_code
    c = result.counts
    print(json.dumps({"study": result.study, "best_value": result.best_value, "best_trial": result.best_trial,
                      "best_params": result.best_params, "best_run_id": result.best_run_id,
                      "complete": c.complete, "pruned": c.pruned, "failed": c.failed, "retried": c.retried,
                      "interrupted_trials": c.interrupted,
                      "parent_run_id": result.parent_run_id, "interrupted": result.interrupted,
                      "registered": result.extra.get("registered"),
                      **{k: result.extra[k] for k in ("pareto", "gpus", "packing") if k in result.extra}}, default=str))
    if result.exit_code == 1:
        print(f"hpo: {result.failure_summary()}", file=sys.stderr)
    return result.exit_code


def _dashboard_command(a: argparse.Namespace) -> str:
    from hpo.storage import mask

    flags = [f"--study {a.study}"] if a.study else []
    flags += [f"--storage {mask(a.storage)}"] if a.storage else []
    flags += [f"--root {a.root}"] if a.root != "runs" else []
    from hpo.summary import command

    return " ".join([command("hpo"), "dashboard", a.sweep_file, *flags])


def cmd_worker(a: argparse.Namespace) -> int:
    from hpo.backends.optuna.worker import WorkerConfig, serve

    store = a.storage or os.environ.get("HPO_STORAGE")
    if not store:
        raise UsageError("--storage: required (a journal file path or an RDB URL), or set HPO_STORAGE")
    threads = os.environ.get("HPO_THREADS", "")
    threads = int(threads) if threads.isdigit() and int(threads) > 0 else None
    cfg = WorkerConfig(a.study, store, a.tracking_uri or os.environ.get("HPO_TRACKING_URI"), a.name or "",
                       a.trainer, a.parent_pid, threads)
    from hpo.diskspace import EXIT_CODE, DiskFull
    from hpo.trial import Interrupted

    try:
        n = serve(cfg)
    except Interrupted:
        return 130
    except DiskFull as exc:  # the controller sees this exit code and stops the sweep with one line
        print(f"hpo worker: {exc}", file=sys.stderr)
        return EXIT_CODE
    print(f"hpo worker: ran {n} trial(s); the queue is empty", file=sys.stderr)
    return 0


def cmd_agent(a: argparse.Namespace) -> int:
    from hpo.backends import wandb as wandb_backend

    return wandb_backend.agent_command(a)


def cmd_validate(a: argparse.Namespace) -> int:
    from hpo import api

    settings = _settings(a)
    try:
        sw = api.prepare(replace(settings, options=replace(settings.options, validate_only=True)))
    except SpecError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    print(f"{a.sweep_file}: ok ({sw.spec.method}, {len(sw.spec.params)} parameters, budget {sw.budget}, "
          f"backend {sw.backend})")
    what = api.runs_what(sw)
    print(f"  each trial runs {what}" if what else f"  but {api.NOTHING_TO_RUN.split(': ', 1)[1]}")
    from hpo.program import missing, unknown_macros

    for macro in unknown_macros(sw.spec.raw.get("command")):
        print(f"  note: command: {macro} is not one of W&B's macros; W&B's agent leaves it out, and so does hpo")
    note = missing(sw.spec.raw, Path(a.sweep_file))
    if note:
        print(f"  {note}")
    return 0


def cmd_explain(a: argparse.Namespace) -> int:
    from hpo import explain, spec

    loaded = spec.load(a.sweep_file, a.space)
    if a.json:
        print(json.dumps(explain.as_json(loaded, _settings(a).options)))
    else:
        print(explain.explain(loaded, _settings(a).options))
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from hpo import existing

    found = existing.cached(_settings(a))  # the controller's status.json, when it may answer (without Optuna)
    if found:
        s, metric = found[0]["status"], found[1]
    else:
        from hpo import status

        study, metric = existing.open_study(_settings(a))
        s = status.status(study, metric)
    print(json.dumps(s, default=str) if a.json else status_text(s, metric))
    return 0


def cmd_trials(a: argparse.Namespace) -> int:
    import csv

    from hpo import existing, status

    study, metric = existing.open_study(_settings(a))
    rows = status.trial_rows(study, metric)
    if a.sort:
        goal = study.directions[0].name.lower() if a.sort == metric and len(study.directions) == 1 else None
        rows = status.sort_rows(rows, a.sort, goal)
    if a.json:
        print(json.dumps(rows, default=str))
    elif a.csv:
        if rows:
            out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
            out.writeheader()
            out.writerows(rows)
    else:
        print(status.rows_text(rows))
    return 0


def cmd_best(a: argparse.Namespace) -> int:
    from hpo import existing

    cached = None if a.model else existing.cached(_settings(a))
    if cached:
        (data, metric), study = cached, None
        name, raw, found = data["status"]["study"], json.loads(data.get("spec") or "{}"), data["best"]
    else:
        study, metric = existing.open_study(_settings(a))
        name, raw, found = study.study_name, json.loads(study.user_attrs.get(keys.SPEC) or "{}"), None
    if raw and not raw.get("metric") and not raw.get("metrics"):
        print(f"hpo: {name} has no metric (a {raw['method']} sweep records its trials; add metric: to rank them)",
              file=sys.stderr)
    if found is None:
        from hpo import status

        found = status.best(study, metric)
    if a.model and "pareto" in found:
        raise UsageError("--model: a metrics: sweep has a Pareto front, not one best model; each front entry's "
                         "run_id holds its trial's model (hpo.model_uri) when it kept one")
    if a.model:
        from hpo import status

        found.update(status.best_model(study, found.get("mlflow_run_id"), a.tracking_uri))
    if sys.stdout.isatty() and not a.json:  # a person reads a table; a pipe or --json gets JSON
        print(best_text(found, metric))
        return 0
    print(json.dumps(found, default=str))
    return 0


def params_text(params: dict[str, Any]) -> str:
    """`lr=0.003 hidden=64`: parameters for a person."""
    return " ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items())


def status_text(s: dict[str, Any], metric: str) -> str:
    done, budget = s["finished"], s["budget"]
    of = f"{done}/{budget} finished" if budget is None or done <= int(budget) else f"{done} finished (budget {budget})"
    lost = "".join(f", {s[k]} {k}" for k in ("retried", "interrupted") if s[k])
    lines = [f"{s['study']}: {of} - {s['complete']} complete, {s['pruned']} pruned, {s['failed']} failed{lost}; "
             f"{s['running']} running, {s['queued']} queued"]
    b = s["best"]
    if "pareto" in b:
        lines.append(f"Pareto front: {len(b['pareto'])} trial(s) on {', '.join(b['metrics'])} (hpo best shows it)")
    elif b.get("best_trial") is not None:
        lines.append(f"best: trial {b['best_trial']} {metric}={b[metric]:.6g}  {params_text(b['params'])}")
    for r in s["running_trials"]:
        lines.append(f"running: trial {r['trial']} on {r['worker'] or '?'} (gpu {r['gpu'] or 'none'}), "
                     f"step {'-' if r['step'] is None else r['step']}")
    return "\n".join(lines)


def best_text(found: dict, metric: str) -> str:
    """`hpo best` on a terminal: the front as a table, or the best trial, its params one per line, its run."""
    from hpo.summary import pareto_table

    if "pareto" in found:
        return f"{found['study']}: Pareto front, {len(found['pareto'])} trial(s)\n{pareto_table(found['pareto'])}"
    if found.get("best_trial") is None:
        return f"{found['study']}: no best trial yet"
    width = max(map(len, [*found["params"], "MLflow run"]))
    lines = [f"{found['study']}: best trial {found['best_trial']}, {metric} {found[metric]:.6g}"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in found["params"].items()]
    lines += [f"  {'MLflow run'.ljust(width)}  {found['mlflow_run_id']}"] if found.get("mlflow_run_id") else []
    lines += [f"  {k.ljust(width)}  {found[k]}" for k in ("model_uri",) if found.get(k)]
    lines += [f"  {'registered'.ljust(width)}  {r['uri']}" + (f" (@{', @'.join(r['aliases'])})" if r.get("aliases") else "")
              for r in found.get("registered") or ()]
    return "\n".join(lines)


def cmd_control(a: argparse.Namespace) -> int:
    """hpo pause | resume | stop: what the sweep's controller and workers do next, through its storage."""
    from hpo import control, existing

    study, _ = existing.open_study(_settings(a))
    want = {"pause": control.PAUSED, "resume": None, "stop": control.STOPPED}[a.command]
    was = control.state(study)
    if a.command == "pause" and study.user_attrs.get(keys.BACKEND, "optuna") != "optuna":
        raise UsageError(f"pause: the {study.user_attrs[keys.BACKEND]} engine cannot hold its trials; `hpo stop`, "
                         "then the same `hpo run` resumes it")
    control.set_state(study, want)
    what = {"pause": "paused: running trials finish, no new one starts until `hpo resume`",
            "resume": "running" + (" again" if was else " (it was not paused)"),
            "stop": "stopping: running trials end interrupted; the same `hpo run` resumes it"}[a.command]
    print(f"{study.study_name}: {what}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from hpo import existing, htmlreport
    from hpo.api import prepare

    study, _ = existing.open_study(_settings(a))
    plan = prepare(replace(_settings(a), inspect_only=True))
    print(htmlreport.write_for(study, plan.spec, plan.dir))
    return 0


def cmd_dashboard(a: argparse.Namespace) -> int:

    from hpo import dashboard, storage
    from hpo.api import prepare

    if not 1 <= a.port <= 65535:
        raise UsageError(f"--port: must be 1-65535 (got {a.port})")
    plan = prepare(replace(_settings(a), inspect_only=True))
    store = a.storage or plan.storage
    storage.require_existing(store)
    return dashboard.serve(store, a.host, a.port, [h for h in (a.allowed_hosts or "").split(",") if h.strip()],
                           a.writable, plan.name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo", description="Hyperparameter sweeps from a W&B sweep.yaml on Optuna, Ray or W&B.")
    from hpo import __version__

    parser.add_argument("--version", action="version", version=f"hpo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands: dict[str, tuple[Callable, str]] = {
        "run": (cmd_run, "run a sweep to its budget"),
        "validate": (cmd_validate, "check a sweep file; exit 0 or 2"),
        "explain": (cmd_explain, "what each engine's early termination will do"),
        "status": (cmd_status, "counts and what runs now"),
        "best": (cmd_best, "the best trial: a table on a terminal, JSON in a pipe or with --json"),
        "pause": (cmd_control, "running trials finish, no new one starts (optuna engine), on every machine"),
        "resume": (cmd_control, "undo pause"),
        "stop": (cmd_control, "stop the sweep as Ctrl-C would (resumable: run the same command)"),
        "trials": (cmd_trials, "every trial: one column per parameter and metric (--json, --csv, --sort COLUMN)"),
        "report": (cmd_report, "write runs/NAME/report.html: the sweep's plots in one offline file"),
        "dashboard": (cmd_dashboard, "optuna-dashboard for the sweep's storage"),
    }
    for name, (fn, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text)
        _sweep_args(p, with_run=name in ("run", "validate"))
        p.set_defaults(fn=fn)
        if name == "explain":
            p.add_argument("--json", action="store_true", help="one JSON object: each engine's rungs")
        if name == "status":
            p.add_argument("--json", action="store_true", help="one JSON object: counts, budget, best, running trials")
        if name == "trials":
            out = p.add_mutually_exclusive_group()
            out.add_argument("--json", action="store_true", help="a JSON list, one object per trial")
            out.add_argument("--csv", action="store_true", help="CSV with a header row")
            p.add_argument("--sort", metavar="COLUMN", help="sort by a column: the metric best first, others ascending")
        if name == "best":
            p.add_argument("--model", action="store_true",
                           help="also the best trial's MLflow model URI and its registered versions")
            p.add_argument("--json", action="store_true",
                           help="JSON also on a terminal (where it prints a table; a pipe always gets JSON)")
        if name == "dashboard":
            p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
            p.add_argument("--port", type=int, default=8080)
            p.add_argument("--allowed-hosts", help="more Host names it answers, comma-separated (default: "
                                                   "this machine's loopback names and --host; * for any)")
            p.add_argument("--writable", action="store_true",
                           help="allow edits (notes, new or deleted studies, telling trials); default read-only")
    w = sub.add_parser("worker", help="one more worker for a running study (e.g. on another machine)")
    w.add_argument("--study", required=True)
    w.add_argument("--storage", help="journal file path or RDB URL (or $HPO_STORAGE)")
    w.add_argument("--tracking-uri", help="MLflow tracking URI reachable from here (default: the sweep's)")
    w.add_argument("--trainer", help="package.module:function (default: the sweep's)")
    w.add_argument("--name", help="worker name shown in progress and tags")
    w.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    w.set_defaults(fn=cmd_worker)
    ag = sub.add_parser("agent", help="W&B agents, one per GPU slot, for an existing W&B sweep")
    ag.add_argument("sweep_id", help="ENTITY/PROJECT/SWEEP_ID")
    ag.add_argument("--gpus", help="auto | none | 0,2,3 (default: every GPU found, else CPU agents)")
    ag.add_argument("--workers-per-gpu", type=int, default=1)
    ag.add_argument("--workers", type=int, help="CPU agents when there is no GPU")
    ag.add_argument("--count", type=int, help="runs per agent (default: until the sweep ends)")
    ag.add_argument("--trainer", help="package.module:function (default: hpo.train)")
    ag.set_defaults(fn=cmd_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except HpoError as exc:
        print(f"hpo: {exc}" if not isinstance(exc, UsageError) else str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hpo status | head -1`: the reader left; no traceback, as `cat` would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def exit_fast(code: int) -> None:
    """Exit without the interpreter's module teardown (about 1 s once MLflow and SQLAlchemy are loaded,
    paid after every write is done). atexit handlers still run and stdio is flushed; a process that still
    has a non-daemon thread, or HPO_FAST_EXIT=0, exits the usual way."""
    import atexit
    import os
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others or os.environ.get("HPO_FAST_EXIT") == "0":
        sys.exit(code)
    atexit._run_exitfuncs()  # noqa: SLF001 - logging.shutdown and every library's own exit hooks
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def entry() -> None:
    """The `hpo` command (and `python -m hpo`)."""
    exit_fast(main())


if __name__ == "__main__":
    entry()
