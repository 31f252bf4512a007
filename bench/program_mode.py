"""Program mode's cost per trial: `hpo run` on a sweep's own program vs the same program by `subprocess.run`.

Both sides start the same script once per trial with the trial's arguments. The plain
side is what the program costs by itself (interpreter start, imports, its run); hpo's
side adds everything program mode does per trial (a trial from Optuna, an MLflow child
run, the wandb config file, reading its metrics as they come, the process-group stop).
Per-trial cost is the steady-state cycle from the study's own trial timestamps after a
warm-up (bench_overhead.py's method), one worker; the plain side is the mean of the
same number of runs. Two programs: one printing `name=value` lines, one using wandb
(offline) with wandb.config and wandb.log.

    python bench/program_mode.py [--trials 40 --reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import machine, timed
from bench_overhead import cycle_seconds

PROGRAMS = {
    "name=value": textwrap.dedent("""
        import sys
        x = float(sys.argv[1].split("=")[1])
        for epoch in range(1, 4):
            print(f"epoch={epoch} score={x * epoch}", flush=True)
    """),
    "wandb": textwrap.dedent("""
        import wandb
        run = wandb.init(config={"x": 0.5})
        for epoch in range(1, 4):
            wandb.log({"score": wandb.config.x * epoch})
        run.finish()
    """),
}
SWEEP = textwrap.dedent("""
    name: prog
    program: prog.py
    method: random
    metric: {name: score, goal: maximize}
    parameters:
      x: {distribution: uniform, min: 0.0, max: 1.0}
""")
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def plain(n: int, folder: Path) -> float:
    env = {**os.environ, **ENV, "WANDB_DIR": str(folder)}
    start = time.perf_counter()
    for i in range(n):
        subprocess.run([sys.executable, "prog.py", f"--x={i / n}"], cwd=folder, env=env, check=True,
                       capture_output=True)
    return (time.perf_counter() - start) / n


def hpo(n: int, folder: Path) -> float:
    (folder / "sweep.yaml").write_text(SWEEP)
    timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--workers", "1", "--trials", str(n + 10),
           "--no-progress"], folder, ENV)
    return cycle_seconds(folder / "runs" / "prog" / "optuna.log", "prog")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    rows = {}
    for name, source in PROGRAMS.items():
        plain_s, hpo_s = [], []
        for _ in range(a.reps):
            for side, out in ((plain, plain_s), (hpo, hpo_s)):
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "prog.py").write_text(source)
                    out.append(side(a.trials, Path(tmp)))
        rows[name] = {"plain_s": statistics.median(plain_s), "hpo_s": statistics.median(hpo_s),
                      "overhead_s": statistics.median(hpo_s) - statistics.median(plain_s),
                      "plain_all": plain_s, "hpo_all": hpo_s}
    print(json.dumps({"machine": machine(), "trials": a.trials, "reps": a.reps, "programs": rows}, indent=1))


if __name__ == "__main__":
    main()
