"""The fork server (hpo.forkserver): a worker forked from it is the controller's own child, as a
`subprocess.Popen` worker is: its own session, its log, its environment, a fresh random state, its exit
code or signal reaped by the pool; what the server cannot start exactly is started by Popen; the server
dies with its controller. Real processes throughout (tests/fork_probe.py is the worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpo import forkserver
from hpo.slots import Slot
from hpo.worker_pool import Pool

TESTS = str(Path(__file__).parent)
pytestmark = pytest.mark.skipif(not forkserver.enabled(), reason="the fork server is Linux-only")


def _pool(tmp_path: Path, args: dict[int, list[str]], env: dict[int, dict[str, str]] | None = None):
    server = forkserver.ForkServer(["random", "numpy.random"], modules=("hpo", "fork_probe"))  # seeded in the server
    slots = [Slot(i, f"w{i}", "") for i in args]
    pool = Pool(slots, lambda s: [sys.executable, "-m", "fork_probe", *args[s.index]],
                lambda s: {**os.environ, "PROBE": s.name, **(env or {}).get(s.index, {})}, tmp_path, server=server)
    return pool, server


def _reap_all(pool: Pool, timeout: float = 60) -> dict[str, int]:
    codes, deadline = {}, time.monotonic() + timeout
    while pool.workers and time.monotonic() < deadline:
        codes.update({e.slot.name: e.code for e in pool.reap()})
        time.sleep(0.05)
    return codes


def _seen(tmp_path: Path, name: str) -> dict:
    lines = (tmp_path / f"{name}.log").read_text().splitlines()
    return json.loads(lines[0]) | {"stderr": lines[1:]}


def _has_output(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def _exec_env(pid: int) -> bytes:
    """The environment `pid` was exec'd with: a forked worker keeps its server's (hpo sets its own in-process)."""
    return Path(f"/proc/{pid}/environ").read_bytes()


def test_forked_workers_are_this_processs_children_with_their_own_session_env_log_and_exit_code(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)
    pool, server = _pool(tmp_path, {0: ["0", "a"], 1: ["3"], 2: ["sleep"]})
    try:
        pool.start_all()
        sleeper = pool.workers[2].proc
        deadline = time.monotonic() + 60
        while not _has_output(tmp_path / "w2.log") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"PROBE=" not in _exec_env(sleeper.pid), "forked from the server, not a new interpreter"
        assert _cmdline(sleeper.pid) == f"{sys.executable} -m fork_probe sleep", "ps shows the worker's command"
        sleeper.kill()
        codes = _reap_all(pool)
    finally:
        pool.stop(grace=1)
    assert codes == {"w0": 0, "w1": 3, "w2": -signal.SIGKILL}, codes
    seen = {n: _seen(tmp_path, n) for n in ("w0", "w1", "w2")}
    for name, s in seen.items():
        assert s["ppid"] == os.getpid(), f"{name} was not re-parented to its controller: {s}"
        assert s["sid"] == s["pid"], f"{name} is not in a session of its own"
        assert s["probe"] == name and s["main"] == "__main__"
        assert s["stderr"] == ["to stderr"], "stderr goes to the worker's log too"
    assert seen["w0"]["argv"] == ["0", "a"]
    assert len({s["random"] for s in seen.values()}) == 3 and len({s["numpy"] for s in seen.values()}) == 3, \
        "every worker has its own random state"
    assert server.proc.poll() is not None, "the pool's stop ends its server"


def test_what_the_server_cannot_start_exactly_is_started_by_popen(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS)
    pool, _ = _pool(tmp_path, {0: ["sleep"], 1: ["sleep"]}, env={1: {"PYTHONHASHSEED": "123"}})
    try:
        pool.start_all()
        forked, popened = pool.workers[0].proc, pool.workers[1].proc
        assert isinstance(popened, subprocess.Popen) and not isinstance(forked, subprocess.Popen)
        deadline = time.monotonic() + 60
        while not all(_has_output(tmp_path / f"w{i}.log") for i in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"PROBE=w1" in _exec_env(popened.pid) and b"PROBE=" not in _exec_env(forked.pid)
    finally:
        pool.stop(grace=1)


def test_the_server_dies_with_its_controller_even_when_stopped(tmp_path):
    """A controller killed outright (SIGKILL) takes its server with it, even a server a Ctrl-Z stopped."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {TESTS!r})
        from hpo import forkserver
        server = forkserver.ForkServer(["json"])
        print(server.proc.pid, flush=True)
        time.sleep(600)
    """)
    controller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server = int(controller.stdout.readline())
    deadline = time.monotonic() + 60  # stopped only once it waits for requests: past its prctl, its imports done
    while "pipe" not in _wchan(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "pipe" in _wchan(server), _wchan(server)
    os.kill(server, signal.SIGSTOP)
    controller.kill()
    controller.wait()
    deadline = time.monotonic() + 30
    while _state(server) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(server) in ("gone", "Z"), "the server outlived its controller"


def _wchan(pid: int) -> str:
    """Where the kernel has the process waiting (`anon_pipe_read`/`pipe_read`: blocked reading its stdin)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return "gone"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
