"""The end of `hpo run` as a person sees it (stdout a terminal) and as a script sees it (JSON)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
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


def run_on_a_terminal(*args: str, cwd: Path, stderr_too: bool = False, path: str | None = None) -> tuple[int, str]:
    """`hpo ARGS` with stdout (and stderr, if asked) on an 80-column pseudo-terminal; returns (exit code, what
    the terminal got). `path`: the shell's $PATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(BENCH.parent / "tests")]),
           "TERM": "xterm-256color", **({"PATH": path} if path is not None else {})}
    for name in ("MLFLOW_TRACKING_URI", "COLUMNS", "LINES"):
        env.pop(name, None)
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))  # 40 rows, 80 columns
    proc = subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, stdout=sub,
                            stderr=sub if stderr_too else subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
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
    """...and its next steps work as printed from a shell where the venv is not active (after `make sweep`)."""
    write(tmp_path / "sweep.yaml", SWEEP)
    code, shown = run_on_a_terminal(*ARGS, cwd=tmp_path, path="/usr/bin:/bin")
    assert code == 0, shown
    lines = shown.strip().splitlines()
    assert lines[0].startswith("term: done in ") and "3 complete, 0 pruned, 0 failed" in lines[0], shown
    assert "best score 0.75: trial 1, MLflow run " in lines[1], shown  # the grid's best point, by its number
    assert "  x = 0.75" in lines, shown
    at = next(i for i, line in enumerate(lines) if line.startswith("MLflow:"))
    db = (tmp_path / "runs" / "term" / "mlflow.db").resolve()
    venv = Path(sys.executable).parent
    assert lines[at] == f"MLflow:    {venv / 'mlflow'} ui --backend-store-uri sqlite:///{db} --host 127.0.0.1", shown
    assert lines[at + 1].strip() == "then http://127.0.0.1:5000/#/experiments/1/runs  (the runs table)"
    assert lines[-1] == f"dashboard: {venv / 'hpo'} dashboard sweep.yaml"
    for printed in (lines[at].split()[1], lines[-1].split()[1]):  # each runs from that shell as printed
        out = subprocess.run(f"{printed} --version", shell=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (printed, out.stderr)
    # with the venv on PATH, bare names; an offline W&B sweep ends with the `wandb sync` line for its runs
    code, shown = run_on_a_terminal(*ARGS, "--study", "onpath", "--backend", "wandb", "--offline", cwd=tmp_path,
                                    path=f"{venv}:/usr/bin:/bin")
    last = shown.strip().splitlines()[-2:]
    assert code == 0 and last[0] == "dashboard: hpo dashboard sweep.yaml --study onpath", shown
    sync = f"W&B:       wandb sync {Path('runs') / 'onpath' / 'wandb'}/offline-run-*  (uploads the offline runs)"
    assert last[1] == sync, shown
    assert len(list((tmp_path / "runs" / "onpath" / "wandb").glob("offline-run-*"))) == 3  # what it uploads
    assert not any(line.lstrip().startswith("{") for line in lines)  # no JSON for a person


def test_json_on_a_terminal_when_asked(tmp_path):
    write(tmp_path / "sweep.yaml", SWEEP)
    code, shown = run_on_a_terminal(*ARGS, "--json", "--study", "other", cwd=tmp_path)
    assert code == 0, shown
    result = json.loads(shown.strip().splitlines()[-1])  # --json: the scripts' line, also on a terminal
    assert result["study"] == "other" and result["best_value"] == 0.75 and result["complete"] == 3
    assert "dashboard:" not in shown


def test_live_progress_fits_80_columns_and_ends_on_the_final_state(tmp_path):
    """A terminal shows a bar with done/budget, elapsed and ETA, the running trials, and a last frame with
    the final counts (not an empty table); no line is wider than the terminal."""
    write(tmp_path / "sweep.yaml", SWEEP.replace("[0.25, 0.75, 0.5]", "[0.25, 0.75, 0.5, 0.1]"))
    code, shown = run_on_a_terminal("run", "sweep.yaml", "--workers", "2", "--trainer", "fault_trainers:slow",
                                    cwd=tmp_path, stderr_too=True)
    assert code == 0, shown
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # colours off; cursor moves split the frames into lines
    pieces = [p for p in re.split(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n", plain) if p.strip()]
    frames = [i for i, p in enumerate(pieces) if p.startswith("term ") and "/4" in p]
    live = pieces[frames[0]:pieces.index("done") + 1]  # the live view, from its first frame to its last
    too_wide = [p for p in live if len(p) > 80]
    assert not too_wide, too_wide
    assert any("ETA 0:" in pieces[i] for i in frames), pieces  # an estimate while trials remain
    assert any(p.startswith("cpu") and " cpu " in p for p in pieces), pieces  # a running trial on its worker
    last = frames[-1]
    assert "4/4" in pieces[last] and pieces[last + 1].startswith("4 complete, 0 pruned, 0 failed"), pieces
    assert pieces[last + 2] == "done", pieces[last:]  # the final state, not an empty table
