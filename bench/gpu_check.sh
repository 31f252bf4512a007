#!/usr/bin/env bash
# GPU check, for a machine with NVIDIA GPUs: workers land on distinct GPUs (one
# CUDA_VISIBLE_DEVICES each), train on CUDA, keep their CUDA context between trials, and
# each child run carries its GPU's utilisation (NVML); then issue 12's table (bench/bench_gpu.py:
# GPU vs CPU on the default sweep, 1 worker and `--workers-per-gpu auto`, warm-trial latency,
# resnet18 images/s per GPU with K = 1, 2, 4 and auto, NVML busy).
#   bash bench/gpu_check.sh            (writes $OUT or /tmp/gpu_check; about 5 minutes on one H100/H200)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO:$REPO/bench" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
NGPU=$(nvidia-smi -L | wc -l)
WORK="$(mktemp -d)"; cd "$WORK"; cp "$REPO/sweep.yaml" .

# 0) The GPU-only tests: the CUDA-graph step trains like the eager one.
{ "$PY" -m pytest "$REPO/tests/test_trainer.py" -m gpu -q -p no:cacheprovider 2>&1 || true; } | tail -15 > "$OUT/gpu_tests.log"

# 1) 2 workers per GPU, a probe trainer that records where each trial ran.
export HPO_PROBE_DIR="$WORK/probe"; mkdir -p "$HPO_PROBE_DIR"
"$PY" -m hpo run sweep.yaml --study probe --workers-per-gpu 2 --trials $((8 * NGPU)) \
    --trainer gpu_probe:train --no-progress > "$OUT/probe_run.json"
cat "$HPO_PROBE_DIR"/*.jsonl > "$OUT/probe_trials.jsonl"


# 2) What the probe shows (before the long part, so a run cut short still says it).
PROBE_OK=1
"$PY" - "$OUT" "$NGPU" "$WORK" <<'PYEOF' || PROBE_OK=0
import collections, json, sys
out, ngpu = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(f"{out}/probe_trials.jsonl")]
by_pid = collections.defaultdict(list)
for r in rows:
    by_pid[r["pid"]].append(r)
workers = [{"pid": p, "cuda_visible_devices": rs[0]["cuda_visible_devices"], "device_count": rs[0]["device_count"],
            "device": rs[0]["device"], "trials": len(rs), "first_trial_s": rs[0]["seconds"],
            "later_trials_s": round(sum(r["seconds"] for r in rs[1:]) / max(1, len(rs) - 1), 3)} for p, rs in by_pid.items()]
checks = {
    "every_trial_on_cuda": all(r["cuda"] and r["device"] != "cpu" for r in rows),
    "each_worker_sees_one_gpu": all(w["device_count"] == 1 for w in workers),
    "workers_per_gpu": dict(collections.Counter(w["cuda_visible_devices"] for w in workers)),
    "distinct_gpus_used": sorted({w["cuda_visible_devices"] for w in workers}),
}
from mlflow.tracking import MlflowClient  # the probe sweep's runs: NVML on each child and on the parent
client = MlflowClient(f"sqlite:///{sys.argv[3]}/runs/probe/mlflow.db")
runs = client.search_runs([client.get_experiment_by_name("probe").experiment_id], max_results=1000)
children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
checks["children_with_gpu_util_mean"] = sum("gpu_util_mean" in r.data.metrics for r in children)
checks["children"] = len(children)
checks["child_gpu_util_mean_pct"] = [round(r.data.metrics.get("gpu_util_mean", -1), 1) for r in children]
checks["parent_gpu_metrics"] = {k: v for k, v in parent.data.metrics.items() if k.startswith("gpu")}
summary = {"gpus": ngpu, "workers": workers, "checks": checks}
json.dump(summary, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
ok = (checks["every_trial_on_cuda"] and checks["each_worker_sees_one_gpu"] and len(checks["distinct_gpus_used"]) == ngpu
      and checks["children_with_gpu_util_mean"] == checks["children"] and checks["parent_gpu_metrics"])
sys.exit(0 if ok else 1)
PYEOF

# 3) A tiny model's step: eager, fused, CUDA graph (a few seconds).
"$PY" "$REPO/bench/bench_step.py" "$OUT/step.json" > "$OUT/step.log" 2>&1 || { echo "bench_step failed" >&2; tail -20 "$OUT/step.log"; }

# 4) Issue 12's table.
"$PY" "$REPO/bench/bench_gpu.py" --out "$OUT/gpu_cuda.json" > "$OUT/bench_gpu.log" 2>&1 || echo "bench_gpu failed" >&2
[ "$PROBE_OK" = 1 ]
