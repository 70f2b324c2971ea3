#!/usr/bin/env bash
# The reproduction at full scale on a GPU machine, resumable across device calls (one call: <= 10 minutes).
#
# On the device machine, from the repository root, with CIFAR-10 copied into a git-ignored data/ and carried:
#
#     bash benchmarks/gpu_reproduce.sh data "$OUT"
#
# It continues `divjax reproduce` into benchmarks/results/reproduction-full (runs already finished there are
# kept, an interrupted one resumes from its checkpoint), stops cleanly before the call's limit, and returns the
# whole directory as one archive, OUT/reproduction-full.tgz: unpack it into benchmarks/results/ on this side,
# commit it, and the next call continues from there (the directory travels with the working tree).
# Defaults: the Fig. 4/5 analogue on CIFAR-10 for the three core methods with 7 stragglers x5, then without.
# Override for a dry run on CPU, e.g. TASK=synthetic SCALE=tiny LIMIT=120 PYTHON=.venv/bin/python.
set -u
DATA=${1:?usage: gpu_reproduce.sh DATA_DIR OUT_DIR}
OUT=${2:?usage: gpu_reproduce.sh DATA_DIR OUT_DIR}
TASK=${TASK:-cifar10}
SCALE=${SCALE:-full}
EXPERIMENT=${EXPERIMENT:-main}
METHODS=${METHODS:-divshare-0.1,adpsgd,swift}
SETTINGS=${SETTINGS:-stragglers7x5,no-stragglers}
LIMIT=${LIMIT:-500}  # seconds of simulation in this call; the archive is written after it
PYTHON=${PYTHON:-python3}
export PYTHONPATH=. PYTHONUNBUFFERED=1
WHERE=benchmarks/results/reproduction-full
mkdir -p "$OUT" "$WHERE"
DATA_FLAG=()
[ "$TASK" != synthetic ] && DATA_FLAG=(--data-dir "$DATA/$TASK")
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi") \
    | tee "$OUT/gpu_reproduce.log"
# SIGINT at the limit: divjax stops at once and keeps its last checkpoints (every 30 s of wall time).
timeout --signal=INT "$LIMIT" "$PYTHON" -m divjax.cli reproduce "$EXPERIMENT" --task "$TASK" "${DATA_FLAG[@]}" \
    --scale "$SCALE" --methods "$METHODS" --settings "$SETTINGS" --out "$WHERE" --no-progress \
    >> "$OUT/gpu_reproduce.log" 2>&1
echo "reproduce: exit $? at $(date -u +%T)" | tee -a "$OUT/gpu_reproduce.log"
tar czf "$OUT/reproduction-full.tgz" -C benchmarks/results reproduction-full
ls -la "$OUT" | tee -a "$OUT/gpu_reproduce.log"
