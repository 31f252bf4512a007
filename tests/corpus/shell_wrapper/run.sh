#!/usr/bin/env bash
# A cluster-style launcher: it sets the environment, then execs the trainer (so a stop signal reaches
# python itself, not just this shell), passing the sweep's arguments on unchanged.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export OMP_NUM_THREADS=1  # one thread per trial, whatever the node says
export PYTHONHASHSEED=0
echo "launching on $(hostname) with $# arguments" >&2
exec python "$HERE/src/trainer.py" --run-name "sweep-${HPO_TRIAL:-0}" "$@"
