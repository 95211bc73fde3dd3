#!/usr/bin/env bash
# Stage 2 of the demo model on a lent GPU: two candidates side by side on the one GPU, with the
# committed stage-1 projector (models/shapes-smol, `train projector-words`, trained here on CPU)
# frozen, each fitted to a wall-clock budget.
# Usage: xtask/gpu/train-demo.sh SECONDS [BACKEND] (cuda by default; flex for a dry run here)
# Brings back (under $OUT) each run's directory as a tar split into parts that the device tool
# returns (16 MiB a file), and the logs; `xtask/gpu/unpack.sh` joins them here.
source "$(dirname "$0")/common.sh"
budget=${1:?usage: train-demo.sh SECONDS [BACKEND]}
backend=${2:-cuda}
RUNS=/tmp/runs
mkdir -p $RUNS
unpack_binary
unpack_language_model 2>&1 | tail -3

candidate() {
    local name=$1; shift
    "$BIN" train instruct --config models/shapes-smol --vision models/shapes-smol --language-model /tmp/smollm2 \
        --projector models/shapes-smol --freeze-projector \
        --data "shapes:seed=1,n=1000000,task=all,turns=8" --eval-data "shapes:seed=1000000,n=80,task=all" \
        --steps 100000 --time-limit "$budget" --warmup 0.05 --eval-every 100 --checkpoint-every 1000 \
        --backend "$backend" --gpu-autotune minimal --quiet --log-level info --out $RUNS/$name "$@" > "$RUNS/$name.log" 2>&1 || echo "$name failed" >> "$RUNS/$name.log"
}
candidate a16 --lm-layers 16 --attention-only --lr 1e-3 --batch-size 16 &
candidate w4 --lm-layers 4 --lr 5e-4 --batch-size 16 &
wait
nvidia-smi --query-gpu=memory.used --format=csv >> $RUNS/a16.log || true
for name in a16 w4; do
    tail -5 $RUNS/$name.log
    tar -C $RUNS -cf - --exclude checkpoint $name $name.log | split -b 15M - "$OUT/$name.tar.part-"
done
