"""Workers forked from a process that has already imported what every worker imports (Optuna, MLflow, hpo's
worker): a worker skips ~1.5-2 s of imports, once per worker and again at every restart (its trainer, torch
for hpo's own, it still imports itself, in parallel with the others). This is what `multiprocessing`'s forkserver does, for workers that
must stay plain processes of the controller (their own session, a log file, an exit code it reaps).

The server is forked from nothing but imports: it starts no thread and opens no store, and CUDA is never
initialised in it (its children pin `CUDA_VISIBLE_DEVICES` before they touch a GPU). For each request it
forks twice: the middle process exits at once, so the worker is re-parented to the controller, which
marks itself a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`) while a request is in flight. The
controller then reaps its worker with `waitpid` as it would a `subprocess.Popen` child.

Anything the server cannot give exactly as `subprocess.Popen` would (another interpreter, other
`PYTHON*` variables, a module that is not hpo's, no Linux) is started with `subprocess.Popen`;
`HPO_FORKSERVER=0` turns the server off.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 1, 36, 37
# What every worker and agent of hpo imports before its first trial (~2 s of CPU each, mostly MLflow's).
COMMON = ["optuna", "mlflow", "mlflow.tracking", "mlflow.store.db.utils", "hpo.tracking"]
_in_flight = 0  # requests of every server of this process whose worker may not be re-parented yet


def _prctl(option: int, value: Any) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _in_flight_add(n: int) -> None:
    """A subreaper only while a request is in flight: other orphans of the controller's tree go to init."""
    global _in_flight
    before, _in_flight = _in_flight, max(0, _in_flight + n)
    if (before == 0) != (_in_flight == 0):
        _prctl(PR_SET_CHILD_SUBREAPER, int(_in_flight > 0))


def enabled() -> bool:
    """Linux, not turned off, and this process may be a subreaper (its workers must come back to it: a worker
    stops when its parent is no longer its controller)."""
    return (os.environ.get("HPO_FORKSERVER", "1") != "0" and sys.platform == "linux"
            and _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(ctypes.c_int())))


class Forked:
    """A worker forked by the server, as much of `subprocess.Popen` as the pool uses."""

    def __init__(self, server: "ForkServer"):
        self._server, self._pid, self.returncode = server, None, None

    @property
    def pid(self) -> int:
        while self._pid is None:
            self._server.read_reply()
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        pid = self.pid
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not re-parented to us (should not happen): judge by /proc
            if Path(f"/proc/{pid}").exists():
                return None
            self.returncode = 1
            return self.returncode
        if done:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The server process, started with this process's environment; `spawn` answers at once and the
    worker's pid is read when it is first needed (the server may still be importing)."""

    def __init__(self, preload: list[str], modules: tuple[str, ...] = ("hpo",)):
        """`modules`: the packages whose `python -m` the server runs (hpo's own; a test adds its probe)."""
        self.env, self.modules = dict(os.environ), modules
        self.proc = subprocess.Popen([sys.executable, "-m", "hpo.forkserver", *preload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                                     env=self.env)
        self._pending: list[Forked] = []

    def can_start(self, argv: list[str], env: dict[str, str]) -> bool:
        """Whether a worker of `argv` and `env` forked from the server is what Popen would start."""
        if self.proc.poll() is not None or len(argv) < 3 or argv[:2] != [sys.executable, "-m"]:
            return False
        if not any(argv[2] == m or argv[2].startswith(m + ".") for m in self.modules):
            return False
        python = {k for k in (*env, *self.env) if k.startswith("PYTHON")}
        return all(env.get(k) == self.env.get(k) for k in python)

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> Forked:
        request = {"argv": argv, "env": env, "log": str(log.resolve()), "cwd": os.getcwd()}
        _in_flight_add(1)
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        handle = Forked(self)
        self._pending.append(handle)
        return handle

    def read_reply(self) -> None:
        line = self.proc.stdout.readline()
        handle = self._pending.pop(0)
        if not line:  # the server is gone: what it was asked never started
            handle._pid, handle.returncode = -1, 1
            _in_flight_add(-1 - len(self._pending))
            for h in self._pending:
                h._pid, h.returncode = -1, 1
            self._pending.clear()
        else:
            handle._pid = json.loads(line)["pid"]
            _in_flight_add(-1)

    def stop(self) -> None:  # what the Session calls on what an engine's `prestart` started and never used
        self.close()

    def close(self) -> None:
        while self._pending:
            self.read_reply()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


# -- the server ---------------------------------------------------------------------------------
def _child(request: dict[str, Any], middle: int) -> None:
    """In the worker: its own session, its log as stdout and stderr, its environment; then run its module
    as `python -m MODULE` would. Never returns: the process ends with the module's exit code."""
    import runpy

    deadline = time.monotonic() + 10
    while os.getppid() == middle and time.monotonic() < deadline:  # until re-parented to the controller: a
        time.sleep(0.001)  # worker watches its parent pid to stop with its controller
    _title(shlex.join(request["argv"]))  # `ps` and `top` show the worker's own command, not the server's
    os.setsid()
    os.chdir(request["cwd"])
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own fds
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    # Each worker its own random state, as a fresh interpreter has: Python's `random` reseeds itself at a
    # fork; NumPy's global generator and torch's default one do not.
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    argv = request["argv"]
    sys.argv = [argv[2], *argv[3:]]
    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    sys.exit(0)  # a module that returns instead of exiting: exit 0, as the interpreter would


def _title(text: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(text)


def _serve() -> None:
    # Killed with the controller even while stopped (a Ctrl-Z, a test's SIGSTOP), which a closed stdin
    # cannot do; the workers it forked do not inherit this.
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    for name in sys.argv[1:]:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - what fails to import here fails again, with its message, in a worker
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller ends us by closing our stdin
    _title(f"{sys.executable} -m hpo.forkserver")  # here, while the environment is still the one exec'd
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        request = json.loads(line)
        r, w = os.pipe()
        middle = os.fork()
        if middle == 0:
            os.close(r)
            middle = os.getpid()
            worker = os.fork()
            if worker == 0:
                os.close(w)
                _child(request, middle)
            os.write(w, str(worker).encode())
            os._exit(0)
        os.close(w)
        pid = b""
        while chunk := os.read(r, 64):
            pid += chunk
        os.close(r)
        os.waitpid(middle, 0)  # once it is gone, the worker is the controller's child
        replies.write((json.dumps({"pid": int(pid)}) + "\n").encode())
        replies.flush()
    os._exit(0)  # stdin closed: nothing to flush, and a normal exit would spend ~0.5 s tearing down the imports


if __name__ == "__main__":
    _serve()
