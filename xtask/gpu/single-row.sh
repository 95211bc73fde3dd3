#!/usr/bin/env bash
# Decode speed against `--single-row-split` (few-row matmuls as a batch of inner-dimension blocks
# summed): the GPU profile of 2026-11-27 (bench/results/gpu/README.md) found one-token matmuls
# taking 20-50x the time their weights take to read, with about one thread block per SM. Each
# split runs `twigvlm bench --modes vanilla` (untimed warm-up pass, then a timed one) on the
# random ~1B preset and writes its relspd.json under $OUT/split-N/.
# On the GPU machine, carrying .gpu/check:   bash xtask/gpu/single-row.sh
# Dry run here (CPU build):                 bash xtask/gpu/single-row.sh flex 4 "1 4"
# Usage: single-row.sh [BACKEND] [NEW_TOKENS] [SPLITS]
set -euo pipefail
backend=${1:-cuda}
new_tokens=${2:-64}
splits=${3:-1 4 16 64}
OUT=${OUT:-$PWD/target/single-row}
mkdir -p "$OUT"
source "$(dirname "$0")/small-preset.sh"
for split in $splits; do
    echo "== split $split"
    mkdir -p "$OUT/split-$split"
    ( time "$bin" --log-level info bench --model $model --twig $model/twig --twig-k 2 --backend "$backend" \
        --single-row-split "$split" --modes vanilla --max-new-tokens "$new_tokens" --repeats 1 \
        --data shapes:seed=1000000,n=1,task=describe --results-dir "$OUT/split-$split" ) 2>&1 | grep -v "^\s*$" | tail -6
done 2>&1 | tee "$OUT/single-row.log"
