"""Program mode: each trial runs the sweep's own `program:`/`command:` as a subprocess, as `wandb agent` would.

The command gets W&B's macros (`${env}`, `${interpreter}`, `${program}`, `${args}`,
`${args_no_hyphens}`, `${args_no_boolean_flags}`, `${args_json}`, `${args_json_file}`,
`${envvar:NAME}`, and hpo's `${param.NAME}`), the working directory `wandb agent` would
give it (hpo's own, when the program is there; else the sweep file's folder), and the environment a W&B agent gives a run: `wandb.config` inside the
program holds the trial's parameters (WANDB_SWEEP_PARAM_PATH). Metrics reach hpo
while they are logged: `wandb.log` (through a `sitecustomize` hook on PYTHONPATH),
`hpo.report`, or `name=value` lines on stdout. A stopped trial's process group gets
SIGINT, then SIGTERM, then SIGKILL after a grace. To hpo's engines this is just another trainer:
`train(config, report)`, so it runs the same on Optuna, Ray and W&B.
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.redact import scrub_file

PREFIX = "program:"  # a trainer ref that starts so is a Program (its JSON follows); trainer_ref.PROGRAM
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
REPORT_FD_ENV = "HPO_REPORT_FD"
HOOK_DIR = Path(__file__).parent / "program_hook"
GRACE_S = float(os.environ.get("HPO_PROGRAM_GRACE_S", "4"))
MACRO = re.compile(r"\$\{([^}]+)\}")
PAIR = re.compile(r"(?<![\w./-])([A-Za-z_][\w./-]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
                  r"(?![\w.])", re.IGNORECASE)

# Who the running trial is, set by whoever runs it (TrialRun, the W&B agent): its number, its MLflow run id,
# and the W&B run id to give the program's wandb.init (the W&B engine names its runs).
TRIAL: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("hpo_trial", default={})


class ProgramFailed(Exception):
    """The program exited with a code other than 0; the message is the end of its stderr."""


@dataclass(frozen=True)
class Program:
    """A sweep's command, where it runs and where its trials write. Plain data: it travels as a trainer ref."""

    command: tuple[str, ...]
    program: str | None
    cwd: str
    run_dir: str
    study: str
    project: str | None = None

    @property
    def logs(self) -> Path:
        return Path(self.run_dir) / "logs"

    def ref(self) -> str:
        return PREFIX + json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_ref(cls, ref: str) -> Program:
        data = json.loads(ref[len(PREFIX):])
        return cls(**{**data, "command": tuple(data["command"])})

    def argv(self, config: Mapping[str, Any], json_file: Path) -> list[str]:
        """The command with its macros filled in, as W&B's agent fills them."""
        args = {k: {"value": v} for k, v in config.items()}
        values = _sweep_args(args)
        values.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[self.program or ""],
                      args_json_file=[str(json_file)])
        out: list[str] = []
        for chunk in self.command:
            chunk = str(chunk)
            whole = MACRO.fullmatch(chunk)
            if whole and not whole.group(1).startswith(("envvar:", "param.")):
                out += [str(v) for v in values.get(whole.group(1), [])]  # W&B's agent drops an unknown one
                continue
            out.append(MACRO.sub(lambda m: _inline(m.group(1), config, values), chunk))
        if out and self.program and out[0] == self.program and "/" not in out[0]:
            out[0] = str(Path(self.cwd) / out[0])  # `${program}` first: the script itself, not one on PATH
        return out

    def describe(self) -> str:
        return " ".join(self.command)


MACROS = ("env", "interpreter", "program", "args", "args_no_hyphens", "args_no_boolean_flags", "args_json",
          "args_json_file", "args_no_equals", "args_append_hydra", "args_override_hydra")


def unknown_macros(command: list[Any] | None) -> list[str]:
    """`${...}` in a command that W&B's agent does not know (it drops them): usually a typo."""
    names = [m.group(1) for c in command or [] for m in MACRO.finditer(str(c))]
    return [f"${{{n}}}" for n in names if n not in MACROS and not n.startswith(("envvar:", "param."))]


def _sweep_args(args: dict[str, Any]) -> dict[str, list[Any]]:
    """W&B's own forms of the arguments (${args}, ${args_no_hyphens}, ...), from wandb when it is there."""
    try:
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    except ImportError:
        flags = [f"{k}={a['value']}" for k, a in args.items()]
        return {"args": ["--" + f for f in flags], "args_no_hyphens": flags,
                "args_no_boolean_flags": [f"--{k}" if a["value"] is True else f"--{k}={a['value']}"
                                          for k, a in args.items() if a["value"] is not False],
                "args_json": [json.dumps({k: a["value"] for k, a in args.items()})]}
    return {k: v for k, v in create_sweep_command_args({"args": args}).items() if isinstance(v, list)}


def _inline(name: str, params: Mapping[str, Any], values: Mapping[str, list[Any]]) -> str:
    if name.startswith("envvar:"):
        return os.environ.get(name[7:], name[7:])  # W&B leaves the name when the variable is unset
    if name.startswith("param."):
        return str(_lookup(params, name[6:]))
    return " ".join(str(v) for v in values.get(name, [f"${{{name}}}"]))


def _lookup(config: Mapping[str, Any], name: str) -> Any:
    """A parameter by its name: a literal key first (`a.b` as written), else a path through nested blocks."""
    if name in config:
        return config[name]
    head, _, rest = name.partition(".")
    return _lookup(config[head], rest) if rest and isinstance(config.get(head), Mapping) else ""


def is_builtin(command: list[Any] | None, program: str | None) -> bool:
    """`command: ... -m hpo.train ...` or `program: hpo/train.py`: hpo's own trainer, run in-process."""
    if command and any(str(c) in ("hpo.train", "hpo/train.py") for c in command):
        return True
    return bool(program) and Path(str(program)).as_posix().endswith("hpo/train.py")


def from_sweep(raw: Mapping[str, Any], sweep_file: Path, run_dir: Path, study: str,
               project: str | None = None, missing_ok: bool = False) -> Program | None:
    """The sweep's own program, or None when it names hpo's trainer or nothing; raises UsageError if missing
    (unless `missing_ok`: `hpo validate` checks a file that may be run elsewhere, and notes it)."""
    from hpo.errors import UsageError

    command, program = raw.get("command"), raw.get("program")
    if not command and not program or is_builtin(command, program):
        return None
    command = [str(c) for c in (command or DEFAULT_COMMAND)]
    uses_program = any("${program}" in c for c in command)
    if uses_program and not program:
        raise UsageError("program: the command uses ${program} but the sweep names no program")
    cwd = working_dir(str(program) if program else None, sweep_file)
    if uses_program and not (cwd / str(program)).is_file() and not missing_ok:
        raise UsageError(f"program: {program} not found in {Path.cwd()} (where `wandb agent` would look) "
                         f"nor beside the sweep file in {Path(sweep_file).resolve().parent}")
    return Program(tuple(command), str(program) if program else None, str(cwd), str(Path(run_dir).resolve()),
                   study, project)


def missing(raw: Mapping[str, Any], sweep_file: Path) -> str | None:
    """`hpo validate`'s note when the program the command runs is in neither place `hpo run` looks."""
    command, program = raw.get("command"), raw.get("program")
    if not program or is_builtin(command, program) or not any("${program}" in str(c) for c in command or DEFAULT_COMMAND):
        return None
    if (working_dir(str(program), sweep_file) / str(program)).is_file():
        return None
    return (f"note: program: {program} is not in {Path.cwd()} nor beside the sweep file; `hpo run` from here "
            "would refuse it (run it where `wandb agent` would find the program)")


def working_dir(program: str | None, sweep_file: Path) -> Path:
    """Where the program runs. `wandb agent` starts it in its own working directory, so hpo does too when the
    program is there (`hpo run scripts/exp/sweep.yaml` from the repository root, `program: train.py` at the
    root); else beside the sweep file, saying so once; a sweep with no `program:` runs beside its file."""
    here, beside = Path.cwd().resolve(), Path(sweep_file).resolve().parent
    if program and (here / program).is_file():
        return here
    if program and here != beside and (beside / program).is_file():
        print(f"hpo: program: {program} is not in {here}, where `wandb agent` would run it; running it from "
              f"{beside}, beside the sweep file", file=sys.stderr)
    return beside


def load(ref: str) -> Callable:
    return ProgramTrainer(Program.from_ref(ref))


class ProgramTrainer:
    """`train(config, report)` for a Program: one subprocess per trial, its metrics fed to `report` as they come."""

    def __init__(self, program: Program):
        self.program = program

    def __call__(self, config: dict[str, Any], report: Callable[[int, Mapping[str, float]], None]) -> None:
        p = self.program
        me = TRIAL.get()
        tag = f"trial-{me.get('number', os.getpid())}"
        p.logs.mkdir(parents=True, exist_ok=True)
        json_file, config_file = p.logs / f"{tag}.args.json", p.logs / f"{tag}.config.yaml"
        argv = p.argv(config, json_file)
        if any(str(json_file) in c for c in argv):
            json_file.write_text(json.dumps(config))
        _write_wandb_config(config_file, config)
        read_end, write_end = os.pipe()
        try:
            env = self._env(config_file, write_end, me)
            with open(p.logs / f"{tag}.err", "wb") as err:
                # Own session (and process group): Ctrl-C reaches hpo, which stops the whole group in order.
                proc = subprocess.Popen(argv, cwd=p.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=err, pass_fds=(write_end,), start_new_session=True,
                                        preexec_fn=_die_with_parent)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        try:
            self._follow(proc, read_end, p.logs / f"{tag}.out", report)
        finally:
            stop(proc)
            for name in (f"{tag}.out", f"{tag}.err"):
                scrub_file(p.logs / name)  # a program may print its argv, where ${envvar:...} put a secret
        if proc.returncode != 0:
            raise ProgramFailed(f"exit code {proc.returncode}: {_tail(p.logs / f'{tag}.err')}")

    @staticmethod
    def _follow(proc: subprocess.Popen, read_end: int, out_log: Path, report: Callable) -> None:
        """Hand each report to `report` as it comes, until the program has exited and its output is read.

        The step is the logged `epoch` when there is one, else the step hpo.report or a `step=` line gave,
        else the count of reports that hold the sweep's metric (what W&B's hyperband counts).
        """
        reports: queue.Queue = queue.Queue()
        fd_seen = threading.Event()
        readers = [threading.Thread(target=_read_reports, args=(read_end, reports, fd_seen), daemon=True),
                   threading.Thread(target=_read_stdout, args=(proc.stdout, out_log, reports, fd_seen),
                                    daemon=True)]
        for t in readers:
            t.start()
        metric, counted = getattr(report, "metric", None), 0
        while True:
            try:
                step, metrics = reports.get(timeout=0.05)
            except queue.Empty:
                if proc.poll() is None:
                    continue
                _signal_group(proc.pid, signal.SIGKILL)  # what it forked and left behind
                for t in readers:  # a process that left the group may hold a pipe: do not wait on it
                    t.join(timeout=5)
                if not reports.empty():
                    continue
                return
            if not metrics:
                continue
            holds_metric = metric is None or metric in metrics
            counted += holds_metric
            if "epoch" in metrics and math.isfinite(metrics["epoch"]):
                step = int(metrics["epoch"])
            elif step is None:
                step = counted if holds_metric else counted + 1
            report(step, metrics)

    def _env(self, config_file: Path, fd: int, me: Mapping[str, Any]) -> dict[str, str]:
        from hpo.backends.wandb.online import has_credentials

        p = self.program
        # The fd with its pipe's inode: a process that inherits the variable but not the fd (close_fds) may
        # have that number open on another file; the writers check the inode before they write.
        env = {**os.environ, REPORT_FD_ENV: f"{fd}:{os.fstat(fd).st_ino}", "WANDB_SWEEP_PARAM_PATH": str(config_file),
               "WANDB_RUN_GROUP": p.study, "WANDB_NAME": f"trial-{me.get('number', '')}",
               "WANDB_DIR": p.run_dir, "HPO_TRIAL": str(me.get("number", ""))}
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(HOOK_DIR), os.environ.get("PYTHONPATH")) if x)
        if me.get("run_id"):  # `mlflow.start_run()` in the program logs into the trial's child run
            env["MLFLOW_RUN_ID"] = me["run_id"]
            for key, value in (("MLFLOW_TRACKING_URI", me.get("tracking_uri")),
                               ("MLFLOW_EXPERIMENT_ID", me.get("experiment_id"))):
                if value:
                    env[key] = str(value)
        env.pop("WANDB_RUN_ID", None)  # the worker's, if any: each trial is a run of its own
        if me.get("wandb_run_id"):
            env["WANDB_RUN_ID"] = me["wandb_run_id"]
        if me.get("wandb_mode"):  # `--backend wandb --offline`: offline even with credentials
            env["WANDB_MODE"] = me["wandb_mode"]
        if p.project:
            env.setdefault("WANDB_PROJECT", p.project)
        if not has_credentials(env):
            env.setdefault("WANDB_MODE", "offline")
        for key in ("WANDB_SERVICE", "WANDB_SWEEP_ID", "WANDB_AGENT_ID"):  # the worker's own wandb, if any
            env.pop(key, None)
        return env


def _libc_prctl() -> Callable | None:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the worker that started it dies (even by SIGKILL). Linux only."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _write_wandb_config(path: Path, config: Mapping[str, Any]) -> None:
    """The file `wandb agent` writes for a run (WANDB_SWEEP_PARAM_PATH): `{name: {value: v}}`."""
    import yaml

    body = yaml.safe_dump({k: {"value": v} for k, v in config.items()}, default_flow_style=False, sort_keys=False)
    path.write_text("wandb_version: 1\n\n" + body)


def _read_reports(fd: int, out: queue.Queue, seen: threading.Event) -> None:
    """JSON lines from hpo.report and the wandb hook: `{"metrics": {...}, "step": N or absent}`."""
    with os.fdopen(fd, "rb") as f:
        for line in f:
            try:
                msg = json.loads(line)
                seen.set()  # the program reports through hpo: its stdout is only its log now
                if "metrics" not in msg:
                    continue
                step = None if msg.get("step") is None else int(msg["step"])
                out.put((step, {str(k): float(v) for k, v in msg["metrics"].items()}))
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
                continue


def _read_stdout(stream, log: Path, out: queue.Queue, seen: threading.Event) -> None:
    """Copy stdout to the trial's log; `name=value` lines are reports unless the program reports otherwise.

    It keeps reading whatever happens (a line it cannot use, a log it cannot write): a program whose
    stdout nobody reads would block on its next write.
    """
    try:
        log_file = open(log, "wb")
    except OSError:
        log_file = None
    try:
        for raw in stream:
            try:
                if log_file is not None:
                    log_file.write(raw)
                    log_file.flush()
            except OSError:
                log_file = None
            if seen.is_set():
                continue
            try:
                pairs = {k: float(v) for k, v in PAIR.findall(raw.decode("utf-8", "replace"))}
                given = pairs.get("step")
                out.put((int(given) if given is not None and math.isfinite(given) else None, pairs))
            except (ValueError, OverflowError):
                continue
    finally:
        if log_file is not None:
            log_file.close()


def _tail(path: Path, lines: int = 10, chars: int = 900) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-chars:] or "(nothing on stderr)"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """The program's whole process group: SIGINT, then SIGTERM, the grace split between them, then SIGKILL;
    waits for the program. SIGINT first, as Ctrl-C at a terminal would: wandb (and other tools) finish their
    own records then (a SIGTERMed wandb run leaves an offline file with no history that `wandb sync` uploads).

    SIGKILL and the wait happen whatever interrupts the grace (a second Ctrl-C, the worker's SIGTERM).
    Its stdout is left to the reader thread, which may be blocked on it.
    """
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if not (proc.poll() is None or _group_alive(proc.pid)):
                break
            _signal_group(proc.pid, sig)
            deadline = time.monotonic() + grace / 2
            while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
                time.sleep(0.05)
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
