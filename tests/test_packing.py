"""`--workers-per-gpu auto` (hpo.packing) and the GPU monitor (hpo.gpumon).

This machine has no GPU, so NVML cannot exist here: the end-to-end test below gives the
controller a stand-in NVML reader (two logical GPUs, one 30 % busy, one 95 % busy) and
runs everything else for real (an Optuna journal, an MLflow store, worker processes).
The real NVML path runs in bench/gpu_check.sh on a GPU machine.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import load_study, run_hpo, runs_of, write
from hpo import api, gpumon, packing
from hpo.errors import UsageError
from hpo.slots import Slot

TESTS = Path(__file__).parent


def test_workers_follow_utilisation_then_memory_then_the_cap():
    idle = packing.decide("0", util=30, per_worker_mb=2_000, total_mb=80_000, baseline_mb=500, cap=4)
    assert (idle.workers, idle.by_util) == (3, 3)  # ceil(90 / 30)
    busy = packing.decide("0", util=95, per_worker_mb=2_000, total_mb=80_000, baseline_mb=500, cap=4)
    assert busy.workers == 1
    tight = packing.decide("0", util=10, per_worker_mb=30_000, total_mb=80_000, baseline_mb=500, cap=8)
    assert (tight.by_util, tight.by_mem, tight.workers) == (9, 2, 2)  # floor((72000 - 500) / 30000)
    capped = packing.decide("0", util=5, per_worker_mb=100, total_mb=80_000, baseline_mb=0, cap=4)
    assert capped.workers == 4
    full = packing.decide("0", util=10, per_worker_mb=90_000, total_mb=80_000, baseline_mb=0, cap=4)
    assert full.workers == 1  # never fewer than the one that ran


def test_the_flag_takes_a_number_auto_or_auto_with_a_cap():
    assert packing.parse("3") == (3, None)
    assert packing.parse(2) == (2, None)
    assert packing.parse("auto") == (1, packing.DEFAULT_CAP)
    assert packing.parse("auto:8") == (1, 8)
    for bad in ("0", "auto:0", "auto:x", "many"):
        with pytest.raises(UsageError, match="^--workers-per-gpu: "):
            packing.parse(bad)


def test_auto_on_another_engine_is_one_line_and_writes_nothing(tmp_path, tiny_sweep):
    out = run_hpo("run", str(tiny_sweep), "--backend", "ray", "--gpus", "0", "--workers-per-gpu", "auto",
                  cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "--workers-per-gpu: auto packs the optuna engine's workers; with --backend ray give a number"]
    assert not (tmp_path / "runs").exists()


class FakeNvml:
    """Stands in for NVML (no GPU here): GPU "0" 30 % busy, GPU "1" 95 % busy; each 80 GB, 500 MB in use before
    the sweep and 2,500 MB once its worker runs."""

    UTIL = {"0": 30.0, "1": 95.0}

    def __init__(self):
        self.calls = 0

    def read(self, gpu: str) -> gpumon.Sample:
        self.calls += 1
        used = 500.0 if self.calls <= 2 else 2_500.0  # the monitor's first sample (both GPUs) is the baseline
        return gpumon.Sample(time.time(), self.UTIL[gpu], used, 80_000.0)


SWEEP = """
name: packed
method: random
metric: {name: score, goal: maximize}
parameters:
  x: {distribution: uniform, min: 0.0, max: 1.0}
  epochs: {value: 4}
  sleep: {value: 0.15}
"""


@pytest.mark.slow
def test_auto_measures_each_gpu_then_packs_it_and_records_why(tmp_path, monkeypatch):
    sweep = write(tmp_path / "sweep.yaml", SWEEP)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the GPUs FakeNvml stands in for
    settings = api.Settings(sweep, root=tmp_path / "runs", trials=24, gpus="0,1", workers_per_gpu="auto",
                            trainer="contract_trainers:curve", progress=False,
                            options={"gpu_reader": FakeNvml(), "keep_models": 0, "no_report": True})
    result = api.run(settings)
    assert result.counts.complete == 24

    decisions = {d["gpu"]: d for d in result.extra["packing"]}
    assert decisions["0"]["workers"] == 3 and decisions["0"]["util"] == 30.0  # ceil(90 / 30)
    assert decisions["1"]["workers"] == 1
    assert decisions["0"]["per_worker_mb"] == 2_000.0  # 2,500 in use - 500 before the sweep
    # decided once the first worker's trials gave a long enough window (after its first trial)
    study = load_study(tmp_path / "runs" / "packed", "packed")
    first_on_0 = sorted((t for t in study.trials if t.user_attrs.get("hpo.worker") == "gpu0-w0"),
                        key=lambda t: t.datetime_complete)
    assert decisions["0"]["trial"] in [t.number for t in first_on_0[packing.PROBE_TRIALS - 1:]]
    assert decisions["0"]["seconds"] >= packing.MIN_WINDOW_S

    workers = {t.user_attrs.get("hpo.worker") for t in study.trials}
    assert {"gpu0-w1", "gpu0-w2"} <= workers  # the extra workers on GPU 0 took trials
    assert not any(w.startswith("gpu1-w1") for w in workers)  # GPU 1 was busy enough with one
    cuda = {t.user_attrs["hpo.worker"]: t.user_attrs["hpo.cuda_visible_devices"] for t in study.trials}
    assert cuda["gpu0-w1"] == cuda["gpu0-w2"] == "0"

    _, _, (parent,), _ = runs_of(tmp_path / "runs" / "packed", "packed")
    assert parent.data.tags["hpo.workers_per_gpu"] == "0:3,1:1"
    assert {d["gpu"]: d["workers"] for d in json.loads(parent.data.tags["hpo.packing"])} == {"0": 3, "1": 1}
    assert parent.data.metrics["gpu0_busy"] == pytest.approx(0.30)
    assert parent.data.metrics["gpu1_busy"] == pytest.approx(0.95)
    assert parent.data.metrics["gpu0_mem_used_peak_mb"] == 2_500.0


def test_a_number_packs_as_before_and_records_no_decision(tmp_path, tiny_sweep, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs as far as hpo can tell
    plan = api.prepare(api.Settings(tiny_sweep, root=tmp_path / "runs", gpus="0,1", workers_per_gpu="2"))
    assert [s.name for s in plan.slots] == ["gpu0-w0", "gpu0-w1", "gpu1-w0", "gpu1-w1"]
    assert plan.options.pack_cap is None
    auto = api.prepare(api.Settings(tiny_sweep, root=tmp_path / "runs", gpus="0,1", workers_per_gpu="auto:6"))
    assert [s.name for s in auto.slots] == ["gpu0-w0", "gpu1-w0"] and auto.options.pack_cap == 6
    with pytest.raises(UsageError, match="^--workers-per-gpu: auto packs workers onto GPUs, and there is none here"):
        api.prepare(api.Settings(tiny_sweep, root=tmp_path / "runs", gpus="none", workers=2, workers_per_gpu="auto"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match="^--gpus: no GPU 1 here; CUDA_VISIBLE_DEVICES='' gives no GPU$"):
        api.prepare(api.Settings(tiny_sweep, root=tmp_path / "runs", gpus="1"))


def test_the_monitor_reports_each_gpus_busy_fraction_and_peak_memory():
    reader = FakeNvml()
    mon = gpumon.Monitor(["0", "1"], reader, every=0.01).start()
    deadline = time.monotonic() + 30  # a few samples, however busy the machine
    while len(mon.window("0")) <= 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    mon.stop()
    s = mon.summary()
    assert s["0"]["busy"] == 0.3 and s["1"]["busy"] == 0.95
    assert mon.baseline_mb("0") == 500.0 and s["0"]["mem_used_peak_mb"] == 2_500.0
    assert s["0"]["samples"] == len(mon.window("0")) > 2
    assert gpumon.Monitor(["0"], None).start().summary() == {}  # no NVML: nothing read, nothing said


def test_a_worker_knows_its_one_gpu():
    assert gpumon.own_gpu({"CUDA_VISIBLE_DEVICES": "3"}) == "3"
    assert gpumon.own_gpu({"CUDA_VISIBLE_DEVICES": ""}) is None
    assert gpumon.own_gpu({"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    assert gpumon.own_gpu({}) is None


def _trial(number: int, start: datetime, seconds: float, worker: str = "gpu0-w0", pid: int = 100):
    import optuna

    t = optuna.trial.create_trial(value=0.5, user_attrs={"hpo.worker": worker, "hpo.host": socket.gethostname(),
                                                         "hpo.pid": pid})
    t.number, t.datetime_start, t.datetime_complete = number, start, start + timedelta(seconds=seconds)
    return t


def test_the_window_leaves_out_the_first_trial_and_waits_until_it_is_long_enough():
    """The first trial (CUDA start-up) kept the GPU 2 % busy, the later ones 30 %: the decision reads 30 %."""
    t0 = datetime.now()
    mon = gpumon.Monitor(["0"], None)
    mon.started = t0.timestamp()
    at = lambda s: (t0 + timedelta(seconds=s)).timestamp()  # noqa: E731
    for s in range(0, 40):  # 10 s of samples; the first trial ends at 5 s
        mon.add("0", gpumon.Sample(at(s / 4), 2.0 if s < 20 else 30.0, 500.0 if s == 0 else 3_000.0, 80_000.0))
    packer = packing.Packer([Slot(0, "gpu0-w0", "0")], cap=8, monitor=mon)
    earlier_run = [_trial(90, t0 - timedelta(seconds=100), 1.0, pid=7), _trial(91, t0 - timedelta(seconds=98), 1.0,
                                                                                 pid=7)]
    first = _trial(0, t0, 5.0)
    short = [*earlier_run, first, _trial(1, t0 + timedelta(seconds=5.0), 0.5)]
    assert packer.added(short, 1) == [] and packer.pending(), "0.5 s after the first trial: not yet"
    restarted = _trial(4, t0 + timedelta(seconds=6.0), 3.0, pid=101)  # a worker started again in the slot
    longer = [*short, _trial(2, t0 + timedelta(seconds=5.5), 2.0), _trial(3, t0, 9.0, worker="gpu0-w9"), restarted]
    slots = packer.added(longer, 1)
    d = packer.decisions["0"]
    assert (d.util, d.workers, d.trial) == (30.0, 3, 2), "ceil(90 / 30), the first trial's 2 % left out"
    assert d.per_worker_mb == 2_500.0
    assert [(s.index, s.name, s.cuda_visible_devices) for s in slots] == [(1, "gpu0-w1", "0"), (2, "gpu0-w2", "0")]
    assert packer.added(longer, 3) == [] and not packer.pending(), "once per GPU"
    assert packing.tags([d])["hpo.workers_per_gpu"] == "3"
