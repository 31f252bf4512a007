"""The scale benchmark (bench/bench_scale.py, issue 27) still measures what it says.

A smoke run on a private PostgreSQL: a 60-trial study (a real `hpo run`, then Optuna's own API), `hpo status` /
`best` / `report` on it and on a journal of 60 trials, a live sweep of 60 more trials with its 2 real workers and
6 simulated ones holding trials RUNNING while the controller's statements, rows and CPU are counted, and a
6-trial journal sweep for the bytes written. Every figure must be there and positive, every live trial recorded
(the study's finished count is the budget asked), none left RUNNING or queued, and the simulated workers' trials
must carry the same attributes as a real worker's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import servers

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _contrib() -> bool:
    pg = servers.pg_bin()
    return pg is not None and all((pg.parent / "lib" / f"{m}.so").is_file() for m in ("pg_stat_statements", "auto_explain"))


@pytest.mark.timeout(300)
@pytest.mark.skipif(not _contrib() and not os.environ.get("CI"),
                    reason="PostgreSQL (with pg_stat_statements and auto_explain) is not installed (.ci/run installs it)")
def test_smoke_run_counts_every_figure_and_leaves_no_trial_running(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_scale.py"), "--smoke", "--label", "smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["machine"] and res["commit"]
    (scale,) = res["scales"]
    assert scale["n"] == 60
    figures = scale["figures"]
    expected = {"prefill_trials_per_s", "status_s", "best_s", "report_s", "status_after_run_s", "best_after_run_s", "journal_status_s", "journal_best_s",
                "running_at_window", "waiting_at_window", "controller_polls_per_s", "controller_rows_returned_per_poll",
                "controller_statements_per_poll", "controller_rows_read_per_poll", "controller_rows_read_per_s",
                "controller_cpu_pct", "controller_startup_s", "controller_rss_mb", "worker_join_read_s",
                "pg_xact_per_s", "pg_rows_read_per_s", "pg_rows_returned_to_clients_per_s", "live_trials_per_s",
                "real_trials_per_s", "real_cycle_ms", "real_cycle_minus_trainer_ms", "worker_xact_per_trial",
                "worker_statements_per_trial", "worker_heartbeats_per_worker_minute",
                "sim_heartbeats_per_worker_minute"}
    assert expected <= set(figures), expected - set(figures)
    beats = {"worker_heartbeats_per_worker_minute", "sim_heartbeats_per_worker_minute"}
    for name, value in {**figures, **res["journal"]["figures"]}.items():
        if name in beats:  # one beat per running trial per half grace (30 s), none at a trial's start: the
            assert isinstance(value, (int, float)) and 0 <= value <= 2, (name, value)  # smoke's trials get none
        else:
            assert isinstance(value, (int, float)) and value > 0, (name, value)
    live = scale["live"]
    assert live["explain_window_b"]["stale_queries"] >= 1  # the controller's polls were seen in its plans
    assert live["roles_window_a"]["ctl"]["polls"] >= 1
    assert not live["sim_errors"], live["sim_errors"]
    final = scale["final"]
    assert final["finished"] == final["budget"] == 60 + 60, final  # every live trial recorded
    assert final["running"] == 0 and final["waiting"] == 0, final  # none left RUNNING or queued
    assert final["retried"] == 0 and final["interrupted"] == 0, final
    assert final["live_real"] >= 1 and final["live_sim"] >= 1, final
    keys = scale["attr_keys"]
    assert keys["sim"] == keys["real"], keys  # a simulated worker writes what a real one writes
    assert set(keys["real"]) <= set(keys["prefill"]) | {"hpo.reason", "hpo.error", "hpo.error_type"}, keys
    journal = res["journal"]
    assert journal["trials"] == 6 and journal["final_bytes"] > 0 and journal["process_write_bytes"] > 0
