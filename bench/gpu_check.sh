#!/usr/bin/env bash
# GPU check, for a machine with NVIDIA GPUs: workers land on distinct GPUs (one
# CUDA_VISIBLE_DEVICES each), train on CUDA, and keep their CUDA context between
# trials; plus the default sweep's wall time on the GPU(s), then issue 12's table (bench/bench_gpu.py:
# GPU vs CPU on the default sweep, warm-trial latency, resnet18 images/s per GPU with K = 1, 2, 4, NVML busy).
#   bash bench/gpu_check.sh            (writes $OUT or /tmp/gpu_check; about 6 minutes on one H100/H200)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$REPO:$REPO/bench" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
NGPU=$(nvidia-smi -L | wc -l)
WORK="$(mktemp -d)"; cd "$WORK"; cp "$REPO/sweep.yaml" .

# 1) 2 workers per GPU, a probe trainer that records where each trial ran.
export HPO_PROBE_DIR="$WORK/probe"; mkdir -p "$HPO_PROBE_DIR"
"$PY" -m hpo run sweep.yaml --study probe --workers-per-gpu 2 --trials $((8 * NGPU)) \
    --trainer gpu_probe:train --no-progress > "$OUT/probe_run.json"
cat "$HPO_PROBE_DIR"/*.jsonl > "$OUT/probe_trials.jsonl"

# 2) The main job, as a user runs it: one worker per GPU, then 4 per GPU.
for K in 1 4; do
  s=$(date +%s%N)
  "$PY" -m hpo run sweep.yaml --study "default-k$K" --workers-per-gpu $K --no-progress > "$OUT/default_k$K.json"
  ms=$(( ($(date +%s%N) - s) / 1000000 ))
  echo "{\"workers_per_gpu\": $K, \"wall_seconds\": $((ms / 1000)).$(printf %03d $((ms % 1000)))}" >> "$OUT/timings.jsonl"
done

"$PY" "$REPO/bench/bench_gpu.py" --out "$OUT/gpu_cuda.json" > "$OUT/bench_gpu.log" 2>&1 || echo "bench_gpu failed" >&2

"$PY" - "$OUT" "$NGPU" <<'PYEOF'
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
timings = [json.loads(l) for l in open(f"{out}/timings.jsonl")]
for t in timings:
    res = json.loads(open(f"{out}/default_k{t['workers_per_gpu']}.json").read().splitlines()[-1])
    t.update(best_val_acc=res["best_value"], complete=res["complete"], pruned=res["pruned"], failed=res["failed"])
summary = {"gpus": ngpu, "workers": workers, "checks": checks, "default_sweep": timings}
json.dump(summary, open(f"{out}/gpu_check.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
ok = checks["every_trial_on_cuda"] and checks["each_worker_sees_one_gpu"] and len(checks["distinct_gpus_used"]) == ngpu
sys.exit(0 if ok else 1)
PYEOF
