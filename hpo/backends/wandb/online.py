"""W&B's server: credentials, creating the sweep, the agents' launch plan, `hpo agent`.

The API key only ever travels in the environment an agent inherits.
"""

from __future__ import annotations

import argparse
import json
import netrc
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from hpo.errors import HpoError, MissingDependency, UsageError
from hpo.worker_pool import Pool
from hpo.slots import Slot, parse_gpus, plan, slot_env, threads_per_worker

DEFAULT_BASE_URL = "https://api.wandb.ai"
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|AUTH", re.IGNORECASE)
# wandb waits ~20 s per request on an unreachable server before giving up; hpo
# asks for less so a wrong WANDB_BASE_URL fails fast. A user's own value wins.
TIMEOUTS = {"WANDB_HTTP_TIMEOUT": "10", "WANDB_INIT_TIMEOUT": "60"}


@dataclass(frozen=True)
class AgentLaunch:
    """How one slot's agent starts: plain data, so it can be checked without starting it."""

    slot: Slot
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)

    def describe(self) -> str:
        """argv and the environment hpo sets, secrets masked: safe to print or log."""
        shown = {k: ("***" if SECRET.search(k) else v) for k, v in sorted(self.env.items())
                 if k.startswith(("CUDA_", "HPO_", "WANDB_", "OMP_"))}
        return f"{self.slot.name}: {' '.join(self.argv)}  env {shown}"


def launch_plan(slots: list[Slot], *, sweep: str | None = None, connect: str | None = None,
                count: int | None = None, trainer: str | None = None, parent_pid: int | None = None,
                base_env: Mapping[str, str] | None = None, extra_env: Mapping[str, str] | None = None
                ) -> list[AgentLaunch]:
    """One agent per slot: argv (no secrets) and env (its one GPU, its CPU threads, inherited keys)."""
    threads = threads_per_worker(slots)
    base = {**(os.environ if base_env is None else base_env), **(extra_env or {}), "HPO_THREADS": str(threads)}
    out = []
    for slot in slots:
        argv = [sys.executable, "-m", "hpo.backends.wandb.agent", "--name", slot.name]
        argv += ["--sweep", sweep] if sweep else []
        argv += ["--connect", connect] if connect else []
        argv += ["--count", str(count)] if count else []
        argv += ["--trainer", trainer] if trainer else []
        argv += ["--parent-pid", str(parent_pid)] if parent_pid else []
        out.append(AgentLaunch(slot, tuple(argv), slot_env(slot, base, threads)))
    return out


def has_credentials(env: Mapping[str, str] = os.environ) -> bool:
    """A W&B API key in the environment or in ~/.netrc for the server; no network."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL") or DEFAULT_BASE_URL).hostname
    path = env.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(host and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_module():
    try:
        import wandb
    except ImportError:
        raise MissingDependency("wandb", "the wandb backend") from None
    return wandb


def sweep_config(sw, run_cap: int | None = None) -> dict:
    """sweep.yaml as W&B's server takes it, with run_cap = the budget (it holds across agents)."""
    return {**sw.spec.raw, "run_cap": sw.budget if run_cap is None else run_cap}


@dataclass(frozen=True)
class OnlineSweep:
    """The sweep `hpo run` made on W&B's server: ENTITY/PROJECT/SWEEP_ID, and the runs it may make."""

    path: str
    run_cap: int

    def __str__(self) -> str:
        return self.path


CREATE_DEADLINE_S = 90  # wandb.sweep + default_entity, each request bounded by WANDB_HTTP_TIMEOUT


def create_sweep(sw, run_cap: int | None = None) -> str:
    """wandb.sweep, in a child process; returns ENTITY/PROJECT/SWEEP_ID and prints the id and URL.

    In a child because wandb's service process can outlive a failed request: its
    atexit teardown then waits on it without end. The child is killed (its whole
    session, service included) once it answered or its deadline passed.
    """
    wandb_module()
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in TIMEOUTS.items()}}
    request = json.dumps({"sweep": sweep_config(sw, run_cap), "project": sw.options.project,
                          "entity": sw.options.entity})
    proc = subprocess.Popen([sys.executable, "-m", "hpo.backends.wandb.online"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(request, timeout=CREATE_DEADLINE_S)
    except subprocess.TimeoutExpired:
        out, err = "", f"no answer in {CREATE_DEADLINE_S} s"
    finally:
        _kill_session(proc)
    answer = _last_json(out)
    if "error" in answer or "sweep" not in answer:
        raise HpoError(unreachable(answer.get("error") or (err.strip().splitlines() or ["no answer"])[-1]))
    entity, project, sweep_id = answer["entity"], sw.options.project, answer["sweep"]
    app = env.get("WANDB_BASE_URL", DEFAULT_BASE_URL).replace("://api.", "://")
    print(f"hpo: W&B sweep {entity}/{project}/{sweep_id}: {app}/{entity}/{project}/sweeps/{sweep_id}",
          file=sys.stderr)
    return f"{entity}/{project}/{sweep_id}"


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _last_json(out: str) -> dict:
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return {}


def _create_here() -> None:
    """The child: one JSON request on stdin, one JSON answer on stdout, then out without wandb's teardown."""
    request = json.loads(sys.stdin.read())
    try:
        wandb = wandb_module()
        sweep_id = wandb.sweep(sweep=request["sweep"], project=request["project"], entity=request["entity"])
        answer = {"sweep": sweep_id, "entity": request["entity"] or wandb.Api().default_entity}
    except Exception as exc:  # noqa: BLE001 - any failure is the one line the parent prints
        answer = {"error": " ".join(str(exc).split()) or type(exc).__name__}
    print(json.dumps(answer), flush=True)
    os._exit(0)


def unreachable(why: str) -> str:
    url = os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)
    why = " ".join(why.split())[:300]
    return f"wandb: cannot create the sweep on {url} ({why}); check WANDB_BASE_URL and `wandb login`, or use --offline"


def agent_command(a: argparse.Namespace) -> int:
    """`hpo agent ENTITY/PROJECT/SWEEP_ID`: one wandb agent per slot until the sweep ends or Ctrl-C."""
    wandb_module()
    parts = a.sweep_id.split("/")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"sweep_id: expected ENTITY/PROJECT/SWEEP_ID, got {a.sweep_id!r}")
    if not has_credentials():
        raise UsageError("hpo agent: no W&B credentials; run `wandb login` or set WANDB_API_KEY")
    if a.count is not None and a.count < 1:
        raise UsageError(f"--count: must be at least 1 (got {a.count})")
    for key, value in TIMEOUTS.items():
        os.environ.setdefault(key, value)
    slots = plan(parse_gpus(a.gpus), a.workers_per_gpu, a.workers)
    launches = {p.slot.index: p for p in launch_plan(slots, sweep=a.sweep_id, count=a.count, trainer=a.trainer)}
    log_dir = Path("runs") / "wandb-agents" / parts[2]
    pool = Pool(slots, lambda s: list(launches[s.index].argv), lambda s: dict(launches[s.index].env), log_dir)
    print(f"hpo: {len(slots)} wandb agent(s) for {a.sweep_id} [{', '.join(s.name for s in slots)}]; "
          f"logs in {log_dir}/", file=sys.stderr)
    pool.start_all()
    failed = 0
    try:
        while pool.workers:
            for e in pool.reap():
                failed += e.died
                if e.died:
                    print(f"hpo: agent {e.slot.name}: {e.describe()}; see {log_dir / (e.slot.name + '.log')}",
                          file=sys.stderr)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pool.stop()
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    _create_here()
