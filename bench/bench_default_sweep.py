"""The main job: `hpo run sweep.yaml` (the default sweep on digits), timed in a fresh folder.

    python bench/bench_default_sweep.py [extra hpo run flags]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine, timed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "sweep.yaml", Path(tmp) / "sweep.yaml")
        took, out = timed([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--no-progress", *sys.argv[1:]],
                          Path(tmp))
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"machine": machine(), "wall_seconds": round(took, 1), "best_val_acc": result["best_value"],
                      "complete": result["complete"], "pruned": result["pruned"], "failed": result["failed"],
                      "best_params": result["best_params"]}))


if __name__ == "__main__":
    main()
