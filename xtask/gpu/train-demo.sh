#!/usr/bin/env bash
# Stages 1 and 2 of the demo model on a lent GPU: the projector by regression onto the language
# model's word embeddings (`train projector-words`, a minute), then two stage-2 candidates side by
# side on the one GPU with that projector frozen, each fitted to a wall-clock budget.
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

"$BIN" train projector-words --config models/shapes-smol --vision models/shapes-smol --language-model /tmp/smollm2 \
    --steps 1000 --batch-size 32 --lr 2e-3 --eval-every 250 --backend "$backend" --gpu-autotune minimal --quiet \
    --out $RUNS/projector-words > $RUNS/projector-words.log 2>&1 || echo "projector-words failed" >> $RUNS/projector-words.log

candidate() {
    local name=$1; shift
    "$BIN" train instruct --config models/shapes-smol --vision models/shapes-smol --language-model /tmp/smollm2 \
        --projector $RUNS/projector-words --freeze-projector \
        --data "shapes:seed=1,n=1000000,task=all,turns=8" --eval-data "shapes:seed=1000000,n=80,task=all" \
        --steps 100000 --time-limit "$budget" --warmup 0.05 --eval-every 250 --checkpoint-every 1000 \
        --backend "$backend" --gpu-autotune minimal --quiet --log-level info --out $RUNS/$name "$@" > "$RUNS/$name.log" 2>&1 || echo "$name failed" >> "$RUNS/$name.log"
}
candidate a16 --lm-layers 16 --attention-only --lr 1e-3 --batch-size 16 &
candidate w4 --lm-layers 4 --lr 5e-4 --batch-size 16 &
wait
nvidia-smi --query-gpu=memory.used --format=csv >> $RUNS/a16.log || true
cp -r $RUNS/projector-words.log $RUNS/projector-words/training.json "$OUT/" 2>/dev/null || true
cp $RUNS/projector-words/projector.safetensors "$OUT/projector-words.safetensors" 2>/dev/null || true
for name in a16 w4; do
    tail -5 $RUNS/$name.log
    tar -C $RUNS -cf - --exclude checkpoint $name $name.log | split -b 15M - "$OUT/$name.tar.part-"
done
