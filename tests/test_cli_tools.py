"""The inspection commands (status, best, dashboard) and secrets handling, on a real finished sweep."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, run_hpo, write

TESTS = Path(__file__).parent
SECRET = "wandb-key-0123456789abcdef-SECRET"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small finished sweep (trivial trainer), run with a W&B key in the environment."""
    tmp = tmp_path_factory.mktemp("tools")
    sweep = write(tmp / "sweep.yaml", """
        name: tools
        method: random
        metric: {name: score, goal: maximize}
        parameters:
          x: {distribution: uniform, min: 0.0, max: 1.0}
    """)
    out = run_hpo("run", str(sweep), "--workers", "2", "--trials", "6", "--trainer", "fault_trainers:trivial",
                  cwd=tmp, env={"PYTHONPATH": str(TESTS), "WANDB_API_KEY": SECRET}, check=True)
    return tmp, sweep, out


def test_best_and_status(finished):
    tmp, sweep, out = finished
    best = json.loads(run_hpo("best", str(sweep), cwd=tmp, check=True).stdout)
    assert best["study"] == "tools" and best["score"] == pytest.approx(best["params"]["x"])
    assert best["score"] == json.loads(out.stdout.splitlines()[-1])["best_value"]
    status = run_hpo("status", str(sweep), cwd=tmp, check=True).stdout
    assert status.startswith("tools: 6/6 finished - 6 complete, 0 pruned, 0 failed")


def test_inspecting_a_missing_sweep_is_a_usage_error(tmp_path, finished):
    _, sweep, _ = finished
    out = run_hpo("best", str(sweep), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("--storage: no sweep at")
    assert not (tmp_path / "runs").exists()


def test_no_secret_in_any_output_or_store(finished):
    tmp, _, out = finished
    assert SECRET not in out.stdout + out.stderr
    for path in (tmp / "runs").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path



def _listening(port: int) -> set[str]:
    """Local addresses listening on `port`, read from /proc (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def _dashboard(tmp: Path, sweep: Path, *extra: str):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "dashboard", str(sweep), "--port", str(port), *extra],
                            cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _listening(port) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc, port


def test_dashboard_binds_loopback_and_serves_the_study(finished):
    tmp, sweep, _ = finished
    proc, port = _dashboard(tmp, sweep)
    try:
        assert _listening(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as resp:
            studies = json.loads(resp.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tools"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no authentication" not in err


def test_dashboard_on_all_interfaces_warns(finished):
    tmp, sweep, _ = finished
    proc, port = _dashboard(tmp, sweep, "--host", "0.0.0.0")
    try:
        assert _listening(port) == {"0.0.0.0"}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no authentication" in err
