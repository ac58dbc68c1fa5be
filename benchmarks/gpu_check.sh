#!/usr/bin/env bash
# One prepared run on a fresh GPU machine (no network; Python with torch, torchvision and timm;
# effscale not installed: it runs from this checkout). In order of priority:
#   a. the CUDA tests (pytest -m cuda tests/test_cuda.py), alone: beside the study's workers
#      they ran 5x slower and timed out (2026-11-28),
#   b. the Fashion-MNIST study at three budgets, many runs per GPU, until its time is up
#      (resumable: it continues from the committed results/fashion-mnist-gpu records, and a
#      second call on the same machine resumes the interrupted runs' checkpoints),
#   c. throughput: B0 224 px bf16 effscale vs timm vs torchvision, and the tiny study models'
#      levers (benchmarks/gpu_tiny.py), with the GPU to themselves.
# Everything it measures goes to OUT (at most 8 files: logs, JSON, the study's records as a
# tarball without weights).
#
#   bash benchmarks/gpu_check.sh OUT                 # on the GPU machine
#   DRY_RUN=1 bash benchmarks/gpu_check.sh OUT       # here: everything up to the first CUDA call
#
# Settings (environment): GPU_DATA (the four Fashion-MNIST idx files, carried in an ignored
# folder; default .carry/fashion-mnist), GPU_SECONDS (the whole script's budget, default 390),
# BENCH_SECONDS (kept for c. at the end, default 105), STUDY_OUT (default
# runs/fashion-mnist-gpu: an ignored folder, so a second call on the same machine finds the
# interrupted runs' checkpoints and resumes them), RUNS_PER_GPU (default 15 of the 16 cores: 12 runs at once each kept the pace of a lone
# run on the H200),
# PYTHON; SKIP_TESTS=1 and SKIP_BENCH=1 leave out a. and c. (a call that only continues the
# study). STUDY_DEVICE=cpu rehearses the whole flow (start, deadline, stop, pack) on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR}
DATA=${GPU_DATA:-.carry/fashion-mnist}
BUDGET=${GPU_SECONDS:-390}
BENCH=${BENCH_SECONDS:-105}
STUDY_OUT=${STUDY_OUT:-runs/fashion-mnist-gpu}
RUNS_PER_GPU=${RUNS_PER_GPU:-15}
SEED=results/fashion-mnist-gpu  # the committed records a new machine continues from
PY=${PYTHON:-python3}
DRY=${DRY_RUN:-0}
DEVICE=${STUDY_DEVICE:-cuda}
SKIP_TESTS=${SKIP_TESTS:-0}
SKIP_BENCH=${SKIP_BENCH:-0}
[ "$SKIP_BENCH" = "1" ] && BENCH=8
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
START=$(date +%s)
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT"; exit 2; }
LOG="$OUT/gpu_check.log"
say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# The study: the committed Fashion-MNIST setup (base, 4.3x level, 20k subset, fast recipe) with
# all six strategies, 3 seeds, at 12, 24 and 48 epochs; batch 256 (the recipe's lr is per 256)
study() {
  "$PY" -m effscale study --data fashion-mnist --data-dir "$DATA" --epochs 12,24,48 --seeds 3 \
    --batch-size 256 --device "$DEVICE" --runs-per-gpu "$RUNS_PER_GPU" --out "$STUDY_OUT" "$@"
}

# 0. what this machine is, and the carried data
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz \
         t10k-labels-idx1-ubyte.gz; do
  [ -s "$DATA/$f" ] || { say "missing $DATA/$f: carry the Fashion-MNIST files there"; exit 2; }
done
"$PY" - "$OUT/env.json" "$DRY$DEVICE" <<'EOF' >>"$LOG" 2>&1 || { say "environment check failed"; exit 2; }
import json, platform, sys, time
import torch, torchvision
env = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "python": platform.python_version(),
       "torch": torch.__version__, "torchvision": torchvision.__version__}
try:
    import timm
    env["timm"] = timm.__version__
except ImportError:
    env["timm"] = None
import effscale  # from this checkout
env["effscale"] = effscale.__version__
if sys.argv[2] == "0cuda":  # the first CUDA call (not in a dry run or a CPU rehearsal)
    env.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
               gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
               bf16=torch.cuda.is_bf16_supported())
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF
say "environment: $(cat "$OUT/env.json" | tr -d '\n')"

# 1. the plan, checked before a GPU minute is spent on it
study --dry-run --no-estimate >>"$LOG" 2>&1 || { say "study plan failed (see log)"; exit 2; }
say "study planned"

if [ "$DRY" = "1" ]; then
  "$PY" -m pytest -q -m cuda tests/test_cuda.py --collect-only -p no:cacheprovider >>"$LOG" 2>&1 \
    || { say "cuda tests do not collect"; exit 2; }
  "$PY" benchmarks/throughput.py --help >/dev/null 2>>"$LOG" || { say "throughput.py broken"; exit 2; }
  "$PY" benchmarks/gpu_tiny.py --help >/dev/null 2>>"$LOG" || { say "gpu_tiny.py broken"; exit 2; }
  say "dry run complete"
  exit 0
fi

nvidia-smi >>"$LOG" 2>&1 || true
MODE=$(nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -n 1)
if [ "$MODE" = "Exclusive_Process" ]; then  # one process per GPU: runs cannot share it
  say "GPU in exclusive-process mode: one run at a time"; RUNS_PER_GPU=1
fi

# 2. the CUDA tests, alone; then the study in the background (its own process group, so it
#    can be stopped whole), continuing from the committed records on a fresh machine
if [ "$SKIP_TESTS" != "1" ]; then
  EFFSCALE_CUDA_REPORT="$OUT/cuda_report.json" timeout 180 "$PY" -m pytest -m cuda \
    tests/test_cuda.py -q -p no:cacheprovider --timeout=170 >"$OUT/cuda_tests.log" 2>&1
  say "cuda tests: exit $? ($(tail -n 1 "$OUT/cuda_tests.log"))"
fi
if [ ! -e "$STUDY_OUT" ] && [ -d "$SEED" ] && [ "$STUDY_OUT" != "$SEED" ]; then
  mkdir -p "$(dirname "$STUDY_OUT")" && cp -r "$SEED" "$STUDY_OUT"
  say "study continues from $SEED"
fi
export -f study; export PY DATA DEVICE RUNS_PER_GPU STUDY_OUT
setsid bash -c 'study --no-report' >>"$OUT/study.log" 2>&1 &
STUDY_PID=$!
say "study started (pid $STUDY_PID)"
while kill -0 "$STUDY_PID" 2>/dev/null && [ "$(left)" -gt "$BENCH" ]; do sleep 2; done
if kill -0 "$STUDY_PID" 2>/dev/null; then
  say "study out of time: stopping it (re-running the command resumes it)"
  kill -TERM -- "-$STUDY_PID" 2>/dev/null; sleep 3; kill -KILL -- "-$STUDY_PID" 2>/dev/null
fi
wait "$STUDY_PID" 2>/dev/null
say "study: $(grep -c '^\[' "$OUT/study.log") runs reported; last: $(grep '^\[' "$OUT/study.log" | tail -n 1)"

# 3. throughput with the GPU to itself: B0 at 224 px against timm and torchvision (~35 s), then
#    the tiny study models with and without each lever (the rest)
if [ "$(left)" -gt 60 ] && [ "$SKIP_BENCH" != "1" ]; then
  timeout -k 5 35 "$PY" benchmarks/throughput.py --model b0 --resolution 224 --precision bf16 \
    --channels-last --batch 128 256 --device cuda --rounds 5 --warmup 3 --steps 5 \
    --max-seconds 25 --json "$OUT/throughput.json" >>"$LOG" 2>&1
  say "throughput: exit $?"
  T=$(( $(left) - 8 ))
  # no compile lever: its child process starved the eager rows (15-20 s setup each) and did
  # not finish compiling in 52 s (2026-11-28)
  timeout -k 5 "$T" "$PY" benchmarks/gpu_tiny.py --device cuda --max-seconds $(( T - 7 )) \
    --levers baseline,graph,nosync,fp32,nchw,ema --json "$OUT/gpu_tiny.json" >>"$LOG" 2>&1
  say "gpu_tiny: exit $?"
fi

# 4. if time is left: does MACs or activations predict GPU training time? (BENCHMARKS.md)
EXTRA=runs/gpu_extra; mkdir -p "$EXTRA"
if [ "$(left)" -gt 75 ] && [ "$SKIP_BENCH" != "1" ]; then
  timeout -k 5 $(( $(left) - 15 )) "$PY" benchmarks/cost_model.py --device cuda --batch 256 \
    --json "$EXTRA/cost_model_gpu.json" --plot "$EXTRA/cost_model_gpu.png" >>"$LOG" 2>&1
  say "cost model: exit $?"
fi

# 5. the study's records (plan, configs, metrics, summaries, logs; no weights) and the extras,
#    in one file (at most 8 come back)
tar -czf "$OUT/study_records.tar.gz" --exclude='*.safetensors' --exclude='*.pt' "$STUDY_OUT" \
  "$EXTRA" 2>>"$LOG"
say "done: $(ls "$OUT" | tr '\n' ' ')"
