"""Faults of the machine under a sweep, counted: power cuts (everything SIGKILLed at once) and resumes.

    python bench/faults.py [ROUNDS]

Each round is a fresh 6-trial sweep, SIGKILLed whole (controller and every worker)
at a random moment, then resumed by the same command; the invariants of
tests/test_crash.py (Optuna and MLflow agree on every trial, nothing RUNNING, the
budget exactly met, nothing counted twice) are checked after each. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]

from _common import machine  # noqa: E402
from test_crash import kill_everything_at_random  # noqa: E402


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = kill_everything_at_random(Path(tmp), rounds=rounds, seed=11)
    print(json.dumps({**result, "invariants_held": rounds, "seconds": round(time.monotonic() - start, 1),
                      "machine": machine()}))


if __name__ == "__main__":
    main()
