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


def test_status_json_counts_what_the_study_holds(finished):
    tmp, sweep, out = finished
    got = json.loads(run_hpo("status", str(sweep), "--json", cwd=tmp, check=True).stdout)
    last = json.loads(out.stdout.splitlines()[-1])
    assert {k: got[k] for k in ("study", "budget", "finished", "complete", "failed", "running", "queued")} == {
        "study": "tools", "budget": 6, "finished": 6, "complete": 6, "failed": 0, "running": 0, "queued": 0}
    assert got["best"]["best_trial"] == last["best_trial"] and got["best"]["score"] == last["best_value"]


def test_best_is_a_table_on_a_terminal_and_json_in_a_pipe(finished):
    from test_terminal import run_on_a_terminal

    tmp, sweep, out = finished
    last = json.loads(out.stdout.splitlines()[-1])
    piped = json.loads(run_hpo("best", str(sweep), cwd=tmp, check=True).stdout)
    code, shown = run_on_a_terminal("best", str(sweep), cwd=tmp)
    assert code == 0 and not shown.lstrip().startswith("{"), shown
    lines = shown.strip().splitlines()
    assert lines[0] == f"tools: best trial {last['best_trial']}, score {last['best_value']:.6g}", shown
    assert lines[1].split() == ["x", str(piped["params"]["x"])] and lines[2].split() == [
        "MLflow", "run", piped["mlflow_run_id"]], shown
    code, shown = run_on_a_terminal("best", str(sweep), "--json", cwd=tmp)
    assert code == 0 and json.loads(shown) == piped


def test_trials_is_one_row_per_trial_with_a_column_per_parameter_and_metric(finished):
    import csv
    import io

    from conftest import load_study

    tmp, sweep, _ = finished
    study = load_study(tmp / "runs" / "tools", "tools")
    rows = json.loads(run_hpo("trials", str(sweep), "--json", cwd=tmp, check=True).stdout)
    assert [(r["trial"], r["state"], r["x"], r["score"], r["mlflow_run_id"]) for r in rows] == [
        (t.number, "complete", t.params["x"], t.value, t.user_attrs["hpo.mlflow_run_id"]) for t in study.trials]
    ranked = json.loads(run_hpo("trials", str(sweep), "--json", "--sort", "score", cwd=tmp, check=True).stdout)
    assert [r["score"] for r in ranked] == sorted((t.value for t in study.trials), reverse=True)  # best first
    table = list(csv.DictReader(io.StringIO(run_hpo("trials", str(sweep), "--csv", cwd=tmp, check=True).stdout)))
    assert [float(r["x"]) for r in table] == [t.params["x"] for t in study.trials]
    text = run_hpo("trials", str(sweep), cwd=tmp, check=True).stdout.splitlines()
    assert text[0].split() == ["trial", "state", "score", "step", "x", "worker", "seconds", "reason", "mlflow_run_id"]
    assert len(text) == 1 + len(study.trials)
    bad = run_hpo("trials", str(sweep), "--sort", "nope", cwd=tmp)
    assert bad.returncode == 2 and bad.stderr.startswith("--sort: no column 'nope'; the columns are trial, state")


def test_a_reader_that_leaves_early_gets_no_traceback(finished):
    """`hpo status | head -1`: the pipe closes before hpo writes (`true` reads nothing and leaves at once)."""
    tmp, sweep, _ = finished
    out = subprocess.run(f"{sys.executable} -m hpo status {sweep} | true; echo $?; "
                         f"{sys.executable} -m hpo --version", shell=True, cwd=tmp, capture_output=True, text=True,
                         timeout=120)
    assert out.stderr == "" and out.stdout.startswith("0\nhpo "), out  # then `--version` prints `hpo X.Y.Z`


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
        study_id = studies[0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30) as resp:
            shown = {a["key"] for a in json.loads(resp.read())["user_attrs"]}
        assert {"hpo.budget", "hpo.backend"} <= shown and "hpo.spec" not in shown, shown  # bookkeeping stays out
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no authentication" not in err
    # the address it prints opens the sweep's own study, not the list of studies
    assert f"at http://127.0.0.1:{port}/dashboard/studies/{study_id} (read-only" in err, err


def _request(port: int, method: str, path: str, host: str | None = None, body: dict | None = None):
    """(status, body) of one request, with the Host header as given (a DNS-rebinding page sends its own)."""
    import http.client

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
    con.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = con.getresponse()
    return resp.status, resp.read().decode()


def test_dashboard_refuses_a_forged_host_and_writes_unless_writable(finished):
    tmp, sweep, _ = finished
    new_study = {"study_name": "planted", "directions": ["maximize"]}
    proc, port = _dashboard(tmp, sweep)
    try:
        assert _request(port, "GET", "/api/studies", host="rebind.attacker.example")[0] == 403
        assert _request(port, "POST", "/api/studies", host="rebind.attacker.example", body=new_study)[0] == 403
        status, body = _request(port, "POST", "/api/studies", host=f"localhost:{port}", body=new_study)
        assert status == 403 and "--writable" in body, "read-only by default"
        assert _request(port, "GET", "/api/studies", host=f"localhost:{port}")[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    proc, port = _dashboard(tmp, sweep, "--writable", "--allowed-hosts", "hpo.internal")
    try:
        assert _request(port, "GET", "/api/studies", host="hpo.internal:8080")[0] == 200
        assert _request(port, "POST", "/api/studies", host=f"127.0.0.1:{port}", body=new_study)[0] == 201
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    import optuna

    from hpo.storage import open_storage

    store = open_storage(str(tmp / "runs" / "tools" / "optuna.log"))
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    assert sorted(names) == ["planted", "tools"], "only the --writable dashboard wrote"
    optuna.delete_study(study_name="planted", storage=store)  # the module's sweep as it was


def test_dashboard_on_all_interfaces_warns(finished):
    tmp, sweep, _ = finished
    proc, port = _dashboard(tmp, sweep, "--host", "0.0.0.0")
    try:
        assert _listening(port) == {"0.0.0.0"}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "no authentication" in err
