"""A real Ray cluster of two nodes on this machine, started with `ray start` as on two machines.

The head and the second node are separate raylets (`ray start --head`, then `ray start --address`) with
Ray's token authentication on (its default for `ray start` in Ray 2.60: every process needs the token).
They advertise this machine's own address, not 127.0.0.1: Ray's CLI turns a loopback `--node-ip-address`
into the interface address, and its only loopback mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) refuses a
second node; the address is read from what `ray start --head` prints, and every later process uses it.
The sweep logs to a real `mlflow server` (PostgreSQL behind it, artifacts served over HTTP), so each trial
reaches MLflow from the node it ran on with nothing but the URL. The README's runbook ("A Ray cluster")
is these commands.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import end_session, free_port, run_hpo, write

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
TESTS = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).with_name("ray"))
# A dead node is noticed in about 3 s instead of Ray's 30 s (period x threshold).
HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
          "RAY_health_check_initial_delay_ms": "1000"}
SWEEP = """
name: {name}
method: grid
metric: {{name: score, goal: maximize}}
parameters:
  x: {{values: [1, 2, 3, 4, 5, 6]}}
  epochs: {{value: 3}}
  sleep: {{value: {sleep}}}
"""


class TwoNodes:
    def __init__(self, root: Path):
        self.root, self.port, self.worker_port = root, free_port(), free_port()
        token = root / "auth_token"  # `ray start --head` makes one in ~/.ray otherwise; each machine needs a copy
        token.write_text(secrets.token_hex(32))
        self.address, self.sessions = "", []  # each `ray start` runs in a session of its own: stop() ends those
        self.env = {**os.environ, **HEALTH, "RAY_ADDRESS": "", "PYTHONPATH": str(TESTS), "CUDA_VISIBLE_DEVICES": "",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def ray(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([RAY, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        if args[0] == "start":
            self.sessions.append(proc.pid)
        stdout, stderr = proc.communicate(timeout=180)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if check and out.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} -> {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def start(self) -> None:
        out = self.ray("start", "--head", "--port", str(self.port), "--num-cpus", "1", "--include-dashboard", "false",
                       "--disable-usage-stats", "--temp-dir", str(self.root))
        ip = re.search(r"Local node IP: (\S+)", out.stdout + out.stderr).group(1)
        self.address = f"{ip}:{self.port}"
        self.add_worker()

    def add_worker(self) -> None:
        self.ray("start", "--address", self.address, "--num-cpus", "1", "--node-manager-port", str(self.worker_port),
                 "--disable-usage-stats")

    def nodes(self) -> list[dict]:
        """Ray's own view, from a driver of its own: [{NodeID, Alive, NodeManagerPort}]."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
                "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'NodeManagerPort')} for n in ray.nodes()]))")
        out = subprocess.run([sys.executable, "-c", code % self.address], env=self.env, capture_output=True,
                             text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def worker_node_id(self) -> str:
        return next(n["NodeID"] for n in self.nodes() if n["NodeManagerPort"] == self.worker_port and n["Alive"])

    def kill_worker_node(self) -> int:
        """SIGKILL every process of the second node, its raylet and everything under it (the trial actors): a power
        cut. The whole tree is found before the first kill, while the parent links still say who belongs to it."""
        marks = (f"--node_manager_port={self.worker_port}", f"--node-manager-port={self.worker_port}")
        parent: dict[int, int] = {}
        roots: list[int] = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if any(m in cmd for m in marks):
                roots.append(int(proc.name))
        tree, grew = set(roots), True
        while grew:
            below = {pid for pid, ppid in parent.items() if ppid in tree} - tree
            tree |= below
            grew = bool(below)
        killed = 0
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def stop(self) -> None:
        for sid in self.sessions:
            end_session(sid)


@pytest.fixture(scope="module")
def two_nodes(ray_temp_dir):
    """One cluster for the module: the sweep on both nodes runs first, then the test that kills a node."""
    cluster = TwoNodes(ray_temp_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _runs(url: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return (client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def test_a_two_node_ray_cluster_runs_trials_on_both_nodes_logging_to_an_mlflow_server(
        tmp_path, two_nodes, mlflow_server):
    url, served = mlflow_server.url, mlflow_server.artifacts
    write(tmp_path / "sweep.yaml", SWEEP.format(name="cluster", sleep=0.5))
    out = run_hpo("run", "sweep.yaml", "--backend", "ray", "--ray-address", two_nodes.address, "--tracking-uri", url,
                  "--trainer", "fault_trainers:slow", "--no-progress", cwd=tmp_path, env=two_nodes.env, timeout=400)
    assert out.returncode == 0, out.stderr
    client, parents, children = _runs(url, "cluster")
    nodes = {n["NodeID"] for n in two_nodes.nodes() if n["Alive"]}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    on = {c.data.tags["hpo.node"] for c in children}
    assert on == nodes and len(on) == 2, (on, nodes)  # both nodes ran trials, each child says which
    for c in children:  # each trial logged its curve to the server from where it ran
        assert [m.value for m in client.get_metric_history(c.info.run_id, "score")][-1] == 3 * float(c.data.params["x"])
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"sweep.yaml", "best.json", "report.html"} <= names, names
    assert not (tmp_path / "runs" / "cluster" / "artifacts").exists()
    exp = client.get_experiment_by_name("cluster")
    assert list((served / exp.artifact_location.removeprefix("mlflow-artifacts:").strip("/")).rglob("best.json"))


def test_a_node_killed_mid_sweep_fails_its_trials_and_the_other_node_meets_the_budget(
        tmp_path, two_nodes, mlflow_server):
    from optuna.trial import TrialState

    from hpo.storage import open_storage

    url = mlflow_server.url
    hold = tmp_path / "hold"  # every trial waits after its first epoch while this file exists: no race with a sleep
    hold.touch()
    write(tmp_path / "sweep.yaml", SWEEP.format(name="nodekill", sleep=0.3) + f"  hold: {{value: {hold}}}\n")
    victim = two_nodes.worker_node_id()
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--backend", "ray", "--ray-address",
                             two_nodes.address, "--tracking-uri", url, "--trainer", "fault_trainers:held",
                             "--no-progress"], cwd=tmp_path, env=two_nodes.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # a trial running on the second node, one epoch in
            _, _, children = _runs(url, "nodekill")
            hit = [c for c in children if c.data.tags.get("hpo.node") == victim and c.info.status == "RUNNING"
                   and c.data.metrics.get("score")]
            if hit or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert hit, "no trial ran on the second node"
        assert two_nodes.kill_worker_node() >= 1
        hold.unlink()
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    client, parents, children = _runs(url, "nodekill")
    assert parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    dead = client.get_run(hit[0].info.run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["hpo.reason"] == "worker died", dead.data.tags
    done = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(float(c.data.params["x"]) for c in done) == [1, 2, 3, 4, 5, 6], "the budget, each point once"
    assert not [c for c in children if c.info.start_time > dead.info.end_time and c.data.tags["hpo.node"] == victim]
    study = __import__("optuna").load_study(study_name="nodekill", storage=open_storage(
        str(tmp_path / "runs" / "nodekill" / "optuna.log")))
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 6 and TrialState.RUNNING not in states
    assert [t for t in study.get_trials() if t.user_attrs.get("hpo.reason") == "worker died"], "the mirror says so"
