"""The search-quality benchmark (bench/search_quality.py, issue 25) still measures what it says.

A smoke run: the synthetic task (hartmann6, no data), 2 seeds, a budget of 3 trainings, every in-library
contender at 1 and 4 simulated workers and every way of running hpo itself (optuna, optuna --optuna-pruner
hyperband, ray, wandb --offline) through the real `hpo run` path. It must record every contender, regret that
never grows with the budget, and hpo's own trials in the sweep's Optuna storage and MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
QUALITY = ROOT / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

import surrogates  # noqa: E402


def test_hartmann_is_a_multi_fidelity_function_with_its_known_optimum():
    t = surrogates.task("hartmann6")
    opt = dict(zip([f"x{i}" for i in range(1, 7)], [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573]))
    acc, dt = t.curve(opt)
    assert acc[-1] == pytest.approx(100.0, abs=0.01)
    assert np.all(np.diff(acc) > 0)  # more epochs, closer to the full-fidelity value
    assert np.allclose(dt, 1 + 9 * 0.6573)


@pytest.mark.skipif(not (surrogates.data_dir() / "lcbench" / "model.onnx").is_file(),
                    reason="YAHPO data not found (set YAHPO_DATA)")
def test_lcbench_surrogate_gives_plausible_curves():
    pytest.importorskip("onnxruntime")
    t = surrogates.task("lcbench:3945")
    cfg = {"batch_size": 91, "learning_rate": 0.00316, "momentum": 0.545, "weight_decay": 0.05, "num_layers": 3,
           "max_units": 256, "max_dropout": 0.5}
    acc, dt = t.curve(cfg)
    assert len(acc) == 52 and np.all((acc > 0) & (acc <= 100))
    assert acc[-1] > 85 and acc[-1] > acc[0] + 20  # learns: percent, not a fraction
    assert np.all(dt > 0) and 10 < dt.sum() < 10_000  # seconds per epoch from the cumulative `time` column
    from sim import LazyCurve

    lazy = LazyCurve(t, cfg)  # evaluated in chunks: the same numbers as the whole curve
    for e in (1, 2, 7, 52):
        assert lazy.at(e) == pytest.approx((acc[e - 1], dt[e - 1]), rel=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_run_records_every_contender_and_hpos_own_trials(tmp_path):
    import contenders

    out, partial = tmp_path / "sq.json", tmp_path / "sq.jsonl"
    proc = subprocess.run([sys.executable, "-W", "ignore", str(ROOT / "bench" / "search_quality.py"), "--smoke",
                           "--out", str(out), "--partial", str(partial), "--plots", ""],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    runs = res["runs"]
    errors = [r for r in runs if "error" in r]
    assert not errors, errors[0]["error"]
    hpo_names = {"hpo_optuna", "hpo_optuna_hb", "hpo_ray", "hpo_wandb"}
    seen = {(r["contender"], r["workers"]) for r in runs}
    for name in contenders.IN_LIBRARY:
        assert (name, 4) in seen, name
        assert sorted(r["seed"] for r in runs if (r["contender"], r["workers"]) == (name, 4)) == [0, 1]
        assert ((name, 1) in seen) != (name in contenders.ONLY_PARALLEL), name
    assert {(n, 1) for n in hpo_names} <= seen
    for r in runs:
        for axis in ("best_e", "best_t"):
            got = [b for b in r[axis] if b is not None]
            assert got, (r["contender"], axis)  # something was found within the budget
            assert np.all(np.diff(got) >= 0), (r["contender"], axis)  # regret never grows with the budget
        assert r["used_epochs"] >= 1 and r["trials"] >= 1
    for r in runs:
        if r["kind"] == "hpo":
            assert r["rc"] == 0, r.get("stderr_tail")
            assert r["storage_trials"] == r["trials"] >= 3, r  # every trial the trainer ran is in Optuna's storage
            assert r["mlflow_db"], r
    table = res["analysis"]["table"]
    assert {row["contender"] for row in table.values()} >= set(contenders.IN_LIBRARY) | hpo_names
    for row in table.values():
        for axis in ("e", "t"):
            assert 0 <= row[f"{axis}100"] <= row[f"{axis}50"] <= row[f"{axis}25"] <= row[f"{axis}10"] + 1e-9, row
    ranks = res["analysis"]["ranks"]
    assert "1|hpo_optuna" in ranks["with_hpo"] and "4|optuna_tpe_sha" in ranks["in_library"]
    assert "1|hpo_optuna" not in ranks["in_library"]
