#!/bin/bash
# The full search-quality benchmark as run for bench/RESULTS.md ("Search quality (issue 25)").
#   bench/quality/run_full.sh [work folder]     (make bench-quality)
# Phase 1: every in-library contender, 7 tasks, 20 seeds (W&B's bayes: 5; its GP costs 1-3 min a run), 1 and 4 simulated workers.
# Phase 2: hpo's own runs (`hpo run`, real workers) on 3 tasks: 1 worker (hpo_optuna 4 repetitions, the
# other engines 2; hpo_optuna also 3 on the other 4 tasks), then 4 workers (hpo_optuna 2, the others 1 where time allowed) with 20 s of real sleep
# spread over each run. (hpo --backend wandb costs ~5 min a run on LCBench here: W&B's GP and stop_runs.)
# Phase 3: one JSON (bench/results/search_quality.json), the tables, the plots (bench/quality/plots/).
# A phase's finished runs are in WORK/*.jsonl: rerunning skips them.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/search_quality}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
SQ() { nice -n 19 "$PY" -W ignore bench/search_quality.py "$@"; }

SQ --hpo= --seeds 20 --slow-seeds 5 --jobs 2 --partial "$WORK/inlib.jsonl" --out "$WORK/inlib.json" --plots=
HPO() { SQ --contenders= --partial "$WORK/hpo.jsonl" --plots= --out "$WORK/hpo.json" --hpo-sleep 20 "$@"; }
for spec in "hpo_optuna 4" "hpo_optuna_hb 2" "hpo_ray 2" "hpo_wandb 2"; do
  set -- $spec
  HPO --workers 1 --tasks hartmann6 --hpo "$1" --hpo-seeds "$2" --hpo-trials 250
  HPO --workers 1 --tasks lcbench:3945,lcbench:189909 --hpo "$1" --hpo-seeds "$2" --hpo-trials 200
done
HPO --workers 1 --tasks lcbench:7593,lcbench:34539,lcbench:126026,lcbench:146212 --hpo hpo_optuna --hpo-seeds 3 \
    --hpo-trials 200
HPO --workers 4 --tasks hartmann6 --hpo hpo_optuna --hpo-seeds 2 --hpo-trials 250
HPO --workers 4 --tasks lcbench:3945,lcbench:189909 --hpo hpo_optuna --hpo-seeds 2 --hpo-trials 200
HPO --workers 4 --tasks hartmann6 --hpo hpo_optuna_hb,hpo_ray,hpo_wandb --hpo-seeds 1 --hpo-trials 250
HPO --workers 4 --tasks lcbench:3945 --hpo hpo_optuna_hb,hpo_ray --hpo-seeds 1 --hpo-trials 200
HPO --workers 4 --tasks lcbench:189909 --hpo hpo_optuna_hb --hpo-seeds 1 --hpo-trials 200
cat "$WORK/inlib.jsonl" "$WORK/hpo.jsonl" > "$WORK/all.jsonl"
SQ --contenders= --hpo= --partial "$WORK/all.jsonl" --hpo-tasks hartmann6,lcbench:3945,lcbench:189909 \
   --out bench/results/search_quality.json > "$WORK/tables.md"
cat "$WORK/tables.md"
