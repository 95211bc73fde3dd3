#!/usr/bin/env bash
# Is speculative decoding token-identical to greedy on the GPU, per dtype? The 7B-shape bench of
# 2026-11-27 (bench/results/gpu/README.md) found `ssd` leaving greedy in f16 on a random model.
# A verification forward scores several rows where greedy decoding scores one, so the two take
# different kernels and round differently; a random model's near-flat logits turn that into a
# different argmax. This runs `twigvlm bench` (vanilla, ssd, ttp, ttp+ssd) on the random ~1B
# preset once per dtype; each row's `first_divergence` says where an output first left its
# baseline. Results: $OUT/DTYPE/relspd.json.
# On the GPU machine, carrying .gpu/check:   bash xtask/gpu/dtype-identity.sh
# Dry run here (CPU build):                 bash xtask/gpu/dtype-identity.sh flex 4 f32
# Usage: dtype-identity.sh [BACKEND] [NEW_TOKENS] [DTYPES]
set -euo pipefail
backend=${1:-cuda}
new_tokens=${2:-96}
dtypes=${3:-f32 f16 bf16}
OUT=${OUT:-$PWD/target/dtype-identity}
mkdir -p "$OUT"
source "$(dirname "$0")/small-preset.sh"
for dtype in $dtypes; do
    echo "== $dtype"
    mkdir -p "$OUT/$dtype"
    ( time "$bin" --log-level warn bench --model $model --twig $model/twig --twig-k 2 --backend "$backend" \
        --dtype "$dtype" --modes vanilla,ssd,ttp,ttp+ssd --max-new-tokens "$new_tokens" --repeats 1 \
        --data shapes:seed=1000000,n=2,task=describe --results-dir "$OUT/$dtype" ) 2>&1 | grep -v "^\s*$" | tail -8
done 2>&1 | tee "$OUT/dtype-identity.log"
