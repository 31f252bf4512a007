"""A stand-in for the W&B server's sweep protocol, on 127.0.0.1, for tests (no W&B cloud here).

The wandb SDK itself talks to it, unmodified, through WANDB_BASE_URL: the same
GraphQL requests and file_stream posts it sends to api.wandb.ai. Only what a sweep
needs is answered:

    Viewer / GetDefaultEntity     who the (fake) API key belongs to
    UpsertSweep                   wandb.sweep: the sweep.yaml, kept as the server keeps it
    CreateAgent                   wandb.agent registers (host; one agent per process)
    Heartbeat                     wandb.agent every few seconds: its queued/running runs in,
                                  one command out ("run", "stop" or "exit")
    UpsertBucket                  wandb.init / run updates: the run, its config, its sweep
    CreateRunFiles + PUT upload   the run's files at its end (kept: name and size)
    POST /files/E/P/RUN/file_stream   the run's history (each wandb.log), summary, exit code

How it decides (as W&B's hosted sweep controller is taken to; its code is not public): each next run is
`sweeps.next_run(config, runs)` (the `sweeps` package is the engine behind W&B's
controller), proposed to an agent whose heartbeat says it has nothing queued or
running, until the sweep's run_cap is used; an idle agent of a sweep with nothing
more to propose gets "exit". At every heartbeat `sweeps.stop_runs` (early_terminate,
e.g. hyperband) runs over the sweep's runs and their histories as the runs' own
file_stream posted them; a run it marks gets "stop" at its agent's next heartbeat.

What it is not (see tests/test_wandb_server.py for the list the tests rely on): no
GraphQL parser (operations are told apart by name, answers are canned shapes with
only the fields the SDK reads), no persistence, no UI, no artifacts, one
"user" whose entity is `entity`, and nested `parameters:` blocks are not supported.
Everything it saw is kept in memory for the test to assert on (`snapshot()`).
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import re
import secrets
import string
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

with warnings.catch_warnings():  # sweeps 0.2.0's pydantic-1 config keys, under pydantic 2: not ours to fix
    warnings.simplefilter("ignore", UserWarning)
    import sweeps

ALPHABET = string.ascii_lowercase + string.digits
# Keys of a sweep config that W&B's server reads itself (run_cap) or that belong to W&B Launch; the
# `sweeps` package (0.2.0) predates them and rejects them, so they are not handed to it.
SERVER_KEYS = ("run_cap", "job", "image_uri", "scheduler")


def _new_id() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(8))


def _plain(value: Any) -> Any:
    """numpy scalars (the `sweeps` package samples with numpy) -> JSON numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value


@dataclass
class Sweep:
    id: str
    entity: str
    project: str
    config: dict  # the sweep.yaml as wandb.sweep sent it (YAML text, parsed)
    run_cap: int | None
    state: str = "RUNNING"  # RUNNING -> FINISHED once nothing more is proposed and no run is left running
    runs: list[str] = field(default_factory=list)  # run ids, in the order they were proposed
    prior_runs: str | None = None  # priorRunsFilters as sent


@dataclass
class Agent:
    id: str
    sweep: str
    host: str
    entity: str | None
    project: str | None
    registered_at: float
    heartbeats: int = 0
    commands: list[dict] = field(default_factory=list)  # every command it was sent, in order
    last_run_state: dict = field(default_factory=dict)


@dataclass
class Run:
    id: str
    sweep: str | None
    agent: str | None  # the agent it was proposed to (None: a run not made by the sweep)
    args: dict  # the config the server proposed: {name: {"value": v}}
    state: str = "pending"  # pending (proposed) -> running (upserted) -> finished | failed | crashed
    upserted_config: dict | None = None  # the config the run itself reported (UpsertBucket), "_wandb" dropped
    upserts: int = 0
    history: list[dict] = field(default_factory=list)  # wandb-history.jsonl lines, by offset
    summary: dict = field(default_factory=dict)
    exitcode: int | None = None
    complete: bool = False
    should_stop: bool = False  # sweeps.stop_runs marked it
    stop_sent: bool = False  # its agent was told
    history_at_stop: int | None = None  # how many history lines the server had when it marked the run
    files: dict[str, int] = field(default_factory=dict)  # uploaded run files: name -> bytes


class StandinServer:
    """The server, its state, and a thread serving HTTP; `url` is WANDB_BASE_URL."""

    def __init__(self, api_key: str, entity: str = "standin-entity", host: str = "127.0.0.1"):
        self.api_key, self.entity = api_key, entity
        self.lock = threading.RLock()
        self.sweeps: dict[str, Sweep] = {}
        self.agents: dict[str, Agent] = {}
        self.runs: dict[str, Run] = {}
        self.operations: list[str] = []  # every GraphQL operation name, in order
        self.unknown: list[str] = []  # operations it has no answer for (answered with a GraphQL error)
        self.unauthorized: list[str] = []  # requests that came without the API key
        self.errors: list[str] = []  # the stand-in's own failures (a bug here, or a request it cannot read)
        self.events: list[tuple] = []  # (monotonic seconds, what, run or agent id, detail): the order of things
        self.t0 = time.monotonic()
        outer = self

        class Handler(_Handler):
            server_state = outer

        self.httpd = _Quiet((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "StandinServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> dict[str, Any]:
        """Everything it saw, as plain data."""
        with self.lock:
            return copy.deepcopy({
                "sweeps": {k: asdict(v) for k, v in self.sweeps.items()},
                "agents": {k: asdict(v) for k, v in self.agents.items()},
                "runs": {k: asdict(v) for k, v in self.runs.items()},
                "operations": list(self.operations), "unknown": list(self.unknown),
                "unauthorized": list(self.unauthorized), "errors": list(self.errors),
                "events": list(self.events),
            })

    def _event(self, what: str, who: str, detail: Any = None) -> None:
        self.events.append((round(time.monotonic() - self.t0, 3), what, who, detail))

    def create_sweep(self, config: dict, project: str) -> str:
        """A sweep made without hpo (in W&B's UI, or by `wandb sweep`): its id."""
        with self.lock:
            sweep = Sweep(_new_id(), self.entity, project, copy.deepcopy(config), config.get("run_cap"))
            self.sweeps[sweep.id] = sweep
            return sweep.id

    # -- authentication ---------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        """HTTP basic auth, user `api`, password the API key: how the SDK sends it."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, key = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == "api" and secrets.compare_digest(key, self.api_key)

    # -- GraphQL ------------------------------------------------------------------------------
    def graphql(self, query: str, variables: dict, operation: str | None) -> dict:
        name = operation or _operation_name(query)
        with self.lock:
            self.operations.append(name)
            answer = getattr(self, f"op_{name}", None)
            if answer is None:
                self.unknown.append(name)
                return {"data": None, "errors": [{"message": f"stand-in: no answer for {name}"}]}
            return {"data": answer(variables or {})}

    def _viewer(self) -> dict:
        return {"id": "VXNlcjox", "entity": self.entity, "username": self.entity, "email": "",
                "admin": False, "flags": "{}", "teams": {"edges": []}, "userInfo": None}

    def op_Viewer(self, v: dict) -> dict:
        return {"viewer": self._viewer()}

    def op_GetDefaultEntity(self, v: dict) -> dict:
        return {"viewer": self._viewer()}

    def _project(self, entity: str | None, project: str | None) -> dict:
        entity = entity or self.entity
        return {"id": f"{entity}/{project}", "name": project or "uncategorized",
                "entity": {"id": entity, "name": entity}}

    def op_UpsertSweep(self, v: dict) -> dict:
        config = yaml.safe_load(v.get("config") or "{}") or {}
        entity, project = v.get("entityName") or self.entity, v.get("projectName") or "uncategorized"
        if v.get("id"):  # `wandb sweep --update/--pause/--resume/--cancel`: not served (recorded in `errors`)
            raise LookupError("stand-in: updating a sweep is not served")
        # priorRunsFilters (wandb.sweep(prior_runs=...)) is kept for the test to see, not applied.
        sweep = Sweep(_new_id(), entity, project, config, config.get("run_cap"),
                      prior_runs=v.get("priorRunsFilters"))
        self.sweeps[sweep.id] = sweep
        return {"upsertSweep": {"sweep": {"name": sweep.id, "project": self._project(entity, project)},
                                "configValidationWarnings": []}}

    def op_CreateAgent(self, v: dict) -> dict:
        sweep = self.sweeps.get(v.get("sweep", ""))
        if sweep is None:
            raise LookupError(f"no sweep {v.get('sweep')!r}")
        agent = Agent(_new_id(), sweep.id, v.get("host", ""), v.get("entityName"), v.get("projectName"),
                      time.time())
        self.agents[agent.id] = agent
        self._event("agent", agent.id, agent.host)
        return {"createAgent": {"agent": {"id": agent.id}}}

    def op_Heartbeat(self, v: dict) -> dict:
        agent = self.agents[v["id"]]
        agent.heartbeats += 1
        run_state = json.loads(v.get("runState") or "{}")
        agent.last_run_state = run_state
        commands = self._commands(agent, run_state)
        agent.commands.extend(commands)
        for c in commands:
            self._event(c["type"], c.get("run_id") or agent.id, agent.id)
        return {"agentHeartbeat": {"agent": {"id": agent.id}, "commands": json.dumps(commands)}}

    def op_UpsertBucket(self, v: dict) -> dict:
        name = v.get("name") or _new_id()
        run = self.runs.get(name)
        if run is None:  # a run no agent was handed (not one of a sweep's, or a sweep this server never made)
            run = self.runs[name] = Run(name, v.get("sweep"), None, {})
        run.upserts += 1
        if run.state == "pending":
            run.state = "running"
            self._event("init", name, v.get("sweep"))
        if v.get("config"):
            config = json.loads(v["config"])
            config.pop("_wandb", None)
            run.upserted_config = config
        project = self._project(v.get("entity"), v.get("project"))
        return {"upsertBucket": {"bucket": {
            "id": base64.b64encode(f"Run:{name}".encode()).decode(), "name": name, "displayName": name,
            "description": None, "config": v.get("config") or "{}", "sweepName": run.sweep,
            "project": project, "historyLineCount": len(run.history)}, "inserted": run.upserts == 1}}

    def op_CreateRunFiles(self, v: dict) -> dict:
        run = v.get("run", "")
        return {"createRunFiles": {"runID": run, "uploadHeaders": [], "files": [
            {"name": f, "uploadUrl": f"{self.url}/upload/{run}/{f}"} for f in v.get("files", [])]}}

    # -- file_stream and uploads ------------------------------------------------------------------
    def file_stream(self, run_id: str, body: dict) -> dict:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = Run(run_id, None, None, {})
            for fname, chunk in (body.get("files") or {}).items():
                lines = [json.loads(line) for line in chunk.get("content", [])]
                if fname == "wandb-history.jsonl":
                    offset = int(chunk.get("offset", 0))
                    run.history[offset:offset + len(lines)] = lines
                    self._event("history", run_id, len(run.history))
                elif fname == "wandb-summary.json" and lines:
                    run.summary = lines[-1]
            if body.get("complete"):
                run.complete = True
                run.exitcode = body.get("exitcode")
                run.state = "finished" if run.exitcode == 0 else "failed"
                self._event("complete", run_id, run.exitcode)
                self._maybe_finished(run.sweep)
            return {"exitcode": None, "limits": {}}

    def upload(self, run_id: str, name: str, size: int) -> None:
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None:
                run.files[name] = size

    # -- the sweep controller -----------------------------------------------------------------
    def _sweep_runs(self, sweep: Sweep) -> list[Any]:
        """The sweep's runs as the `sweeps` package reads them (SweepRun, by its field aliases)."""
        out = []
        for rid in sweep.runs:
            r = self.runs[rid]
            state = "running" if r.state in ("pending", "running") else r.state
            out.append(sweeps.SweepRun(name=r.id, config=r.args or {k: {"value": v} for k, v in
                                                                     (r.upserted_config or {}).items()},
                                       state=state, sampledHistory=list(r.history),
                                       summaryMetrics=dict(r.summary), stopped=r.stop_sent,
                                       shouldStop=r.should_stop, exitcode=r.exitcode))
        return out

    def _engine_config(self, sweep: Sweep) -> dict:
        raw = {k: v for k, v in sweep.config.items() if k not in SERVER_KEYS}
        return dict(sweeps.SweepConfig(raw))

    def _commands(self, agent: Agent, run_state: dict) -> list[dict]:
        sweep = self.sweeps[agent.sweep]
        config = self._engine_config(sweep)
        if (config.get("early_terminate") or {}).get("type"):
            for marked in sweeps.stop_runs(config, self._sweep_runs(sweep), validate=False):
                run = self.runs[marked.name]
                if not run.should_stop and not run.complete:
                    run.should_stop, run.history_at_stop = True, len(run.history)
                    self._event("should_stop", run.id, len(run.history))
        for rid in run_state:  # one command per heartbeat: pyagent reads only the first
            run = self.runs.get(rid)
            if run is not None and run.should_stop and not run.stop_sent:
                run.stop_sent = True
                return [{"type": "stop", "run_id": rid}]
        if run_state:
            return []
        if sweep.state != "RUNNING":
            return [{"type": "exit"}]
        if sweep.run_cap is not None and len(sweep.runs) >= sweep.run_cap:
            self._no_more(sweep)
            return [{"type": "exit"}]
        proposed = sweeps.next_run(config, self._sweep_runs(sweep), validate=False)
        if proposed is None:  # a grid that is done
            self._no_more(sweep)
            return [{"type": "exit"}]
        args = _plain(proposed.config)
        run = Run(_new_id(), sweep.id, agent.id, args)
        self.runs[run.id] = run
        sweep.runs.append(run.id)
        return [{"type": "run", "run_id": run.id, "args": args, "program": sweep.config.get("program")}]

    def _no_more(self, sweep: Sweep) -> None:
        sweep.state = "FINISHING"
        self._maybe_finished(sweep.id)

    def _maybe_finished(self, sweep_id: str | None) -> None:
        sweep = self.sweeps.get(sweep_id or "")
        if sweep is not None and sweep.state == "FINISHING" and all(self.runs[r].complete for r in sweep.runs):
            sweep.state = "FINISHED"


def _operation_name(query: str) -> str:
    m = re.search(r"\b(?:query|mutation)\s+(\w+)", query or "")
    return m.group(1) if m else "anonymous"


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up before its answer (a process killed mid-request): not the stand-in's error."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_state: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def _answer(self, status: int, payload: Any = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        s = self.server_state
        body = self._body()
        path = self.path.split("?", 1)[0]
        if path.startswith("/sdk/otel/"):  # the SDK's own telemetry: accepted, not kept
            return self._answer(200, {})
        if not s.authorized(self.headers.get("Authorization")):
            with s.lock:
                s.unauthorized.append(path)
            return self._answer(401, {"errors": [{"message": "unauthorized"}]})
        try:
            if path == "/graphql":
                req = json.loads(body)
                return self._answer(200, s.graphql(req.get("query", ""), req.get("variables") or {},
                                                   req.get("operationName")))
            m = re.fullmatch(r"/files/(?:[^/]*/)?[^/]+/([^/]+)/file_stream", path)
            if m:
                return self._answer(200, s.file_stream(m.group(1), json.loads(body or b"{}")))
        except Exception as exc:  # noqa: BLE001 - recorded for the test; the SDK sees a 500
            with s.lock:
                s.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            return self._answer(500, {"errors": [{"message": str(exc)}]})
        with s.lock:
            s.errors.append(f"POST {path}: not served")
        return self._answer(404, {"errors": [{"message": "not found"}]})

    def do_PUT(self) -> None:  # noqa: N802 - the run's files, at the upload URLs CreateRunFiles gave
        m = re.fullmatch(r"/upload/([^/]+)/(.+)", self.path.split("?", 1)[0])
        body = self._body()
        if m:
            self.server_state.upload(m.group(1), m.group(2), len(body))
            return self._answer(200)
        return self._answer(404)
