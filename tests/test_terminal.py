"""The end of `hpo run` as a person sees it (stdout a terminal) and as a script sees it (JSON)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import write

BENCH = Path(__file__).resolve().parent.parent / "bench"  # bench/trivial.py: a trainer that takes no time
SWEEP = """
    name: term
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      x: {values: [0.25, 0.75, 0.5]}
"""
ARGS = ["run", "sweep.yaml", "--workers", "1", "--trainer", "trivial:train", "--no-progress"]


def run_on_a_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """`hpo ARGS` with stdout on a pseudo-terminal (stderr a pipe); returns (exit code, what stdout showed)."""
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    env.pop("MLFLOW_TRACKING_URI", None)
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, stdout=sub, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the terminal's other end closed, the process is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    proc.communicate(timeout=300)
    return proc.returncode, out.decode(errors="replace").replace("\r\n", "\n")


def test_a_terminal_gets_a_summary(tmp_path):
    write(tmp_path / "sweep.yaml", SWEEP)
    code, shown = run_on_a_terminal(*ARGS, cwd=tmp_path)
    assert code == 0, shown
    lines = shown.strip().splitlines()
    assert lines[0].startswith("term: done in ") and "3 complete, 0 pruned, 0 failed" in lines[0], shown
    assert "best score 0.75: trial 1, MLflow run " in lines[1], shown  # the grid's best point, by its number
    assert "  x = 0.75" in lines, shown
    mlflow_line = next(line for line in lines if line.startswith("MLflow:"))
    db = (tmp_path / "runs" / "term" / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db} --host 127.0.0.1" in mlflow_line
    assert "http://127.0.0.1:5000/#/experiments/1/runs" in mlflow_line  # the runs table, not the GenAI overview
    assert lines[-1] == "dashboard: hpo dashboard sweep.yaml"
    assert not any(line.lstrip().startswith("{") for line in lines)  # no JSON for a person


def test_json_on_a_terminal_when_asked(tmp_path):
    write(tmp_path / "sweep.yaml", SWEEP)
    code, shown = run_on_a_terminal(*ARGS, "--json", "--study", "other", cwd=tmp_path)
    assert code == 0, shown
    result = json.loads(shown.strip().splitlines()[-1])  # --json: the scripts' line, also on a terminal
    assert result["study"] == "other" and result["best_value"] == 0.75 and result["complete"] == 3
    assert "dashboard:" not in shown
