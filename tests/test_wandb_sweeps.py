"""Real W&B sweep files from public repositories (tests/wandb_sweeps/, sources in SOURCES.md), run unchanged.

Each sweep's program is replaced by a stand-in that does what those programs do with
W&B: `wandb.init()`, read `wandb.config`, `wandb.log` the sweep's metric. It writes what
it was given (its config and argv) under $SEEN_DIR. The tests check that every trial
finished, that the program saw its parameters both in `wandb.config` and on its command
line (as the sweep's `command:` macros spell them), and that every value lies in its
W&B distribution. Two tools the files call cannot exist here and get stand-ins too:
`conda run` (a shim that runs the rest of its command) and Isaac Lab's `isaaclab.sh -p`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run_hpo
from hpo import spec as specmod
from hpo.spec.yamlsafe import load_text

SWEEPS = Path(__file__).parent / "wandb_sweeps"
FILES = sorted(p.name for p in SWEEPS.glob("*.yaml"))
# W&B refuses these two as well: `early_terminate: hyperband` as text, and `goal: maximum`.
INVALID = {"11-plaid-scalar-early-terminate.yaml": "early_terminate: ",
           "18-global-wheat-goal-maximum.yaml": "metric.goal: 'maximum' is not one of"}
# Not run: 02 names a program under /workspace; 05 and 09 name no program (they validate, and `hpo run`
# says so); 19 misspells ${interpreter}, which W&B's agent drops too, so its program cannot start there either.
NOT_RUN = {"02-kohya-lora-long-command.yaml", "05-dear-nested-parameters.yaml",
           "09-training-toolkit-dotted-names.yaml", "19-dreamprolog-misspelled-macro.yaml"}

STANDIN = """#!{python}
import json, os, sys
import wandb

run = wandb.init()
with open(os.path.join(os.environ["SEEN_DIR"], "trial-" + os.environ["HPO_TRIAL"] + ".json"), "w") as f:
    json.dump({{"config": dict(wandb.config), "argv": sys.argv[1:]}}, f)
metric = os.environ["STANDIN_METRIC"]
for epoch in range(1, 4):
    if metric:
        wandb.log({{metric: 0.5 + 0.1 * epoch}})
run.finish()
"""
TRIALS = 1  # each file's command and parameters, once: what differs between the files
CONDA = '#!/bin/sh\n[ "$1" = run ] && shift\nexec "$@"\n'
ISAACLAB = '#!/bin/sh\n[ "$1" = -p ] && shift\nexec python3 "$@"\n'


def _raw(name: str) -> dict:
    return load_text((SWEEPS / name).read_text(encoding="utf-8"), label=name)


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _stage(tmp_path: Path, name: str) -> tuple[Path, dict]:
    """The sweep file in a folder of its own, its program a stand-in; PATH holds this Python and the shims."""
    shutil.copy(SWEEPS / name, tmp_path / "sweep.yaml")
    raw = _raw(name)
    standin = STANDIN.format(python=sys.executable)
    program = raw.get("program")
    if program and program.endswith(".sh"):
        _executable(tmp_path / program, ISAACLAB)
        script = next(c for c in raw["command"] if str(c).endswith(".py"))
        _executable(tmp_path / script, standin)
    elif program:
        _executable(tmp_path / program, standin)
    shims = tmp_path / "shims"
    _executable(shims / "conda", CONDA)
    if program and "/" not in program and not program.endswith(".py"):
        _executable(shims / program, standin)  # a console script, found on PATH
    seen = tmp_path / "seen"
    seen.mkdir()
    env = {"SEEN_DIR": str(seen), "STANDIN_METRIC": (raw.get("metric") or {}).get("name", ""),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), str(shims), os.environ["PATH"]]),
           "WANDB_SILENT": "true", "HOME": str(tmp_path)}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        os.environ.pop(key, None)
    return seen, env


def test_at_least_17_of_the_19_files_validate_and_the_rest_say_why_in_one_line(tmp_path):
    passed = []
    for name in FILES:
        (tmp_path / name).mkdir()
        _stage(tmp_path / name, name)
        out = run_hpo("validate", "sweep.yaml", "--workers", "1", cwd=tmp_path / name, timeout=120)
        if name in INVALID:
            assert out.returncode == 2 and out.stderr.startswith(INVALID[name]), (name, out.stderr)
            assert out.stderr.count("\n") == 1, (name, out.stderr)
        else:
            assert out.returncode == 0, (name, out.stderr)
            passed.append(name)
    assert len(FILES) == 19 and len(passed) >= 17


def _inside(p: specmod.Param, v) -> bool:
    """`v` lies in W&B's support for the parameter's distribution."""
    c, d = p.config, p.distribution
    if d == "constant":
        return v == c["value"]
    if d in ("categorical", "categorical_w_probabilities"):
        return v in c["values"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    if d == "int_uniform":
        return isinstance(v, int) and c["min"] <= v <= c["max"]
    if d in ("normal", "q_normal", "log_normal", "q_log_normal"):
        return v > 0 if "log" in d else True
    lo, hi = c["min"], c["max"]
    if d in ("log_uniform", "q_log_uniform"):
        lo, hi = math.exp(lo), math.exp(hi)
    elif d == "inv_log_uniform":
        lo, hi = math.exp(-hi), math.exp(-lo)
    slack = c.get("q", 0)
    return lo - slack <= v <= hi + slack


def _value(config: dict, name: str):
    if name in config:
        return config[name]
    head, _, rest = name.partition(".")
    return _value(config[head], rest)


@pytest.mark.parametrize("name", [f for f in FILES if f not in INVALID and f not in NOT_RUN])
def test_a_real_sweep_runs_unchanged(tmp_path, name):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    seen, env = _stage(tmp_path, name)
    out = run_hpo("run", "sweep.yaml", "--trials", str(TRIALS), "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    spec = specmod.from_dict(_raw(name))
    trials = min(TRIALS, spec.grid_size()) if spec.method == "grid" else TRIALS  # a grid runs each point once
    assert result["complete"] + result["pruned"] == trials and result["failed"] == 0, result
    command = [str(c) for c in _raw(name).get("command") or ["${args}"]]
    saws = [json.loads(p.read_text()) for p in seen.glob("trial-*.json")]
    assert len(saws) == trials
    for saw in saws:
        config = saw["config"]
        for p in spec.params:
            assert _inside(p, _value(config, p.name)), (p.name, p.distribution, _value(config, p.name))
        forms = create_sweep_command_args({"args": {k: {"value": v} for k, v in config.items()}})
        for macro in ("args", "args_no_hyphens", "args_no_boolean_flags"):
            if "${" + macro + "}" in command:
                assert all(flag in saw["argv"] for flag in forms[macro]), (macro, saw["argv"])
