"""Slot planning is plain data in, CUDA_VISIBLE_DEVICES out: checked for 4 and 8 'GPUs' with none."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from hpo.errors import UsageError
from hpo.backends.optuna.controller import worker_argv
from hpo.slots import discover_gpus, parse_gpus, plan, slot_env, threads_per_worker


@pytest.mark.parametrize("n_gpus,per_gpu", [(4, 1), (4, 2), (8, 1), (8, 3)])
def test_every_gpu_gets_its_workers_and_only_its_gpu(n_gpus, per_gpu):
    gpus = [str(i) for i in range(n_gpus)]
    slots = plan(gpus, per_gpu)
    assert len(slots) == n_gpus * per_gpu
    assert Counter(s.cuda_visible_devices for s in slots) == {g: per_gpu for g in gpus}
    assert len({s.name for s in slots}) == len(slots)
    for s in slots:
        env = slot_env(s, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "PATH": "/bin"}, 2)
        assert env["CUDA_VISIBLE_DEVICES"] == s.cuda_visible_devices and "," not in env["CUDA_VISIBLE_DEVICES"]
        assert env["PATH"] == "/bin"


def test_cpu_slots_hide_every_gpu():
    slots = plan([], cpu_workers=3)
    assert [s.name for s in slots] == ["cpu0", "cpu1", "cpu2"]
    assert {slot_env(s, {}, 1)["CUDA_VISIBLE_DEVICES"] for s in slots} == {""}


def test_gpu_choice_parsing():
    four = lambda: ["0", "1", "2", "3"]  # noqa: E731 - what NVML or CUDA_VISIBLE_DEVICES shows
    assert parse_gpus("0,2,3", discovered=four) == ["0", "2", "3"]
    assert parse_gpus("none") == []
    assert parse_gpus("auto", discovered=lambda: ["5", "7"]) == ["5", "7"]
    assert parse_gpus(None, discovered=lambda: []) == []  # not given: CPU workers when there is no GPU
    for bad in ("a,b", "0,0", "1;rm", "4", "auto"):
        with pytest.raises(UsageError, match="^--gpus:"):
            parse_gpus(bad, discovered=four if bad != "auto" else lambda: [])
    with pytest.raises(UsageError, match="^--workers-per-gpu:"):
        plan(["0"], 0)


def test_discovery_respects_cuda_visible_devices_without_touching_cuda():
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert discover_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert discover_gpus({}, count=lambda: 0) == []
    assert discover_gpus({}, count=lambda: 3) == ["0", "1", "2"], "NVML's count, numbered as nvidia-smi does"
    from hpo.slots import nvml_count

    assert discover_gpus({}) == [str(i) for i in range(nvml_count())]  # no driver here: none


def test_threads_are_shared_between_workers():
    cores = os.cpu_count() or 1
    assert threads_per_worker(plan([], cpu_workers=1)) == cores
    assert threads_per_worker(plan([], cpu_workers=cores * 2)) == 1


def test_worker_argv_is_a_list_without_secrets():
    argv = worker_argv("s", plan(["0"])[0], 123)
    assert argv[:3] == [sys.executable, "-m", "hpo"] and "--storage" not in argv


def test_importing_the_controller_touches_no_gpu_and_no_torch():
    code = ("import os, sys; before = dict(os.environ); import hpo, hpo.cli, hpo.api, hpo.session, hpo.backends.optuna, "
            "hpo.slots, hpo.worker_pool, hpo.backends.optuna.controller; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert dict(os.environ) == before")
    subprocess.run([sys.executable, "-c", code], check=True)
