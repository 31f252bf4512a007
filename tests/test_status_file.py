"""`runs/NAME/status.json` (hpo.status_file): `hpo status` and `hpo best` answer from the controller's file
while it may answer, and from the study as soon as anything was written to the study after it. Real sweeps,
a real journal and a real SQLite RDB storage; the file is proved to be what answered by editing it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna
import pytest
from conftest import run_hpo, write

from hpo import status_file, storage

TESTS = str(Path(__file__).parent)
ENV = {"PYTHONPATH": TESTS, "CUDA_VISIBLE_DEVICES": ""}


def _cli(tmp_path: Path, *args: str, file: bool = True) -> dict:
    out = run_hpo(*args, cwd=tmp_path, env={**ENV, "HPO_STATUS_FILE": "1" if file else "0"}, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("store", ["journal", "sqlite"])
def test_status_and_best_answer_from_the_file_until_the_study_changes(tmp_path, store):
    sweep = write(tmp_path / "s.yaml", """
        name: sf
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          x: {values: [1, 3, 2]}
          epochs: {value: 2}
          sleep: {value: 0.05}
    """)
    extra = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}"] if store == "sqlite" else []
    run_hpo("run", str(sweep), "--workers", "1", "--trainer", "fault_trainers:slow", "--no-progress", *extra,
            cwd=tmp_path, env=ENV, check=True)
    path = tmp_path / "runs" / "sf" / status_file.NAME
    saved = json.loads(path.read_text())
    assert saved["final"] is True and saved["store"] is not None
    url = extra[1] if extra else str(tmp_path / "runs" / "sf" / "optuna.log")

    # What the file says is what the study says.
    for cmd in (["status", "--json"], ["best"]):
        assert _cli(tmp_path, *cmd, str(sweep), *extra) == _cli(tmp_path, *cmd, str(sweep), *extra, file=False)
    assert _cli(tmp_path, "best", str(sweep), *extra)["params"]["x"] == 3
    assert saved["status"]["complete"] == 3 and saved["status"]["budget"] == 3

    # The file answers (an edit of it shows) ...
    saved["status"]["budget"] = 999
    saved["best"]["best_trial"] = 77
    path.write_text(json.dumps(saved))
    assert _cli(tmp_path, "status", "--json", str(sweep), *extra)["budget"] == 999
    assert _cli(tmp_path, "best", str(sweep), *extra)["best_trial"] == 77

    # ... until anything is written to the study: then the study answers.
    study = optuna.load_study(study_name="sf", storage=storage.open_storage(url))
    study.enqueue_trial({"x": 2})
    now = _cli(tmp_path, "status", "--json", str(sweep), *extra)
    assert now["budget"] == 3 and now["queued"] == 1 and now["complete"] == 3
    assert _cli(tmp_path, "best", str(sweep), *extra)["best_trial"] != 77


def test_a_running_controllers_file_is_trusted_only_while_fresh(tmp_path):
    """Mid-sweep the study changes at every trial: the file of a live controller on this machine that wrote it
    in the last few seconds answers anyway (a poll behind at most); an old one, or a dead writer's, does not."""
    journal = tmp_path / "optuna.log"
    journal.write_text("")
    path = tmp_path / status_file.NAME
    status_file.write(path, {"study": "live"}, {"study": "live", "best_trial": None}, store=-1)
    assert status_file.read(path, str(journal), "live") is not None, "this process wrote it just now"
    assert status_file.read(path, str(journal), "other") is None, "another study's file"

    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "updated": time.time() - 2 * status_file.FRESH_S}))
    assert status_file.read(path, str(journal), "live") is None, "stale: older than FRESH_S"
    path.write_text(json.dumps({**data, "pid": _dead_pid()}))
    assert status_file.read(path, str(journal), "live") is None, "its writer is gone"
    path.write_text(json.dumps({**data, "store": os.path.getsize(journal), "pid": _dead_pid(), "final": True}))
    assert status_file.read(path, str(journal), "live") is not None, "the store is as it was read"
    journal.write_text("{}\n")
    assert status_file.read(path, str(journal), "live") is None, "the store changed since"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
