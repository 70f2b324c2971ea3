#!/usr/bin/env bash
# The performance issue's GPU rows in one call, sized for a 15-minute device lease (~9 minutes of commands).
#
# On the device machine, from the repository root, with CIFAR-10 and MovieLens copied into a git-ignored
# data/ (data/cifar10/cifar10_jpeg.npz, data/movielens/ml-latest-small/...) and carried:
#
#     bash benchmarks/gpu_rows.sh data "$OUT"
#
# Every step has its own time limit, so a slow one cannot starve the rest; each writes its figures and a log
# into OUT (at most 8 files come back from a device call: the steps write 7). Sizes can be overridden for a
# dry run on CPU, e.g. CIFAR_NODES=16 SYNTH_NODES=64 MEMORY_NODES=16 RUN_SECONDS=5 SEEDS_SECONDS=5
# SMALL="--nodes 8 --eval-nodes 2 --test-samples 256" (SMALL goes to the run and the seeds steps) PYTHON=.venv/bin/python.
# shellcheck disable=SC2086  # MEMORY_NODES and SMALL are word lists
set -u
DATA=${1:?usage: gpu_rows.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: gpu_rows.sh DATA_DIR OUT_DIR}
CIFAR_NODES=${CIFAR_NODES:-60,1024}          # target: engine >= 20x the loop for GN-LeNet at n = 1,000
SYNTH_NODES=${SYNTH_NODES:-256,4096}
MEMORY_NODES=${MEMORY_NODES:-1024 4096 10000}  # target: >= 10,000 GN-LeNet nodes on one GPU
RUN_SECONDS=${RUN_SECONDS:-800}                # target: the 60-node CIFAR-10 run of 800 s in <= 60 s
SEEDS_SECONDS=${SEEDS_SECONDS:-40}             # target: 8 vmapped seeds in <= 3x the time of one
SMALL=${SMALL:-}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p "$OUT"
LOG="$OUT/gpu_rows.log"

step() {  # step LIMIT_SECONDS NAME COMMAND...: run it, log it, never stop the script
    local limit=$1 name=$2
    shift 2
    echo "== $name: limit ${limit}s, started $(date -u +%T)" | tee -a "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    echo "== $name: exit $? at $(date -u +%T)" | tee -a "$LOG"
}

(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi") | tee -a "$LOG"
step 200 throughput "$PYTHON" benchmarks/throughput.py --workloads cifar10,synthetic \
    --nodes "cifar10=$CIFAR_NODES;synthetic=$SYNTH_NODES" --cifar10-dir "$DATA/cifar10" --out "$OUT/throughput_gpu"
step 90 run "$PYTHON" -m divjax.cli run --task cifar10 --data-dir "$DATA/cifar10" --algorithms divshare \
    --duration "$RUN_SECONDS" $SMALL --no-progress --out "$OUT/run" --overwrite
cp "$OUT/run/summary.json" "$OUT/run_summary.json"; rm -rf "$OUT/run"
step 80 seeds "$PYTHON" benchmarks/seeds.py --data-dir "$DATA/cifar10" --seeds 8 --duration "$SEEDS_SECONDS" \
    $SMALL --out "$OUT/seeds_gpu.json"
step 110 memory "$PYTHON" benchmarks/memory.py --workloads cifar10 --nodes $MEMORY_NODES \
    --data-dir-cifar10 "$DATA/cifar10" --out "$OUT/memory_gpu"
rm -f "$OUT"/memory_gpu.csv "$OUT"/memory_gpu.png  # the json holds every figure; keep within 8 files
ls -la "$OUT" | tee -a "$LOG"
