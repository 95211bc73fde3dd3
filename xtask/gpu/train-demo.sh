#!/usr/bin/env bash
# Stage 2 of the demo model on a GPU machine, as the curriculum of `cargo xtask train-demo`
# (xtask/src/demo.rs): scenes of one or two objects, then two or three (finding the named one),
# then full scenes with every task, each run starting from the layers the run before tuned. The
# committed vision tower and stage-1 projector (models/shapes-smol) stay frozen; the budget is
# shared 15/25/60 between the three runs, each fitted to its share by --time-limit.
# Usage: xtask/gpu/train-demo.sh SECONDS [BACKEND] (cuda by default; flex for a dry run here)
# Brings back (under $OUT) the last run's directory as a tar split into parts of at most 16 MiB,
# and every run's log; `xtask/gpu/unpack.sh` joins them on the development machine.
source "$(dirname "$0")/common.sh"
budget=${1:?usage: train-demo.sh SECONDS [BACKEND]}
backend=${2:-cuda}
join_payload
unpack_binary
unpack_language_model 2>&1 | tail -3

# instruct_run NAME SHARE% DATA EVAL_DATA [more twigvlm arguments]
instruct_run() {
    local name=$1 share=$2 data=$3 eval_data=$4; shift 4
    local seconds=$((budget * share / 100))
    train_instruct --lr 1e-3 --batch-size 16 \
        --data "$data" --eval-data "$eval_data" --steps $(steps_within $seconds) --time-limit $seconds --warmup 0.05 \
        --eval-every 50 --checkpoint-every 1000 --backend "$backend" --gpu-autotune minimal --quiet --log-level info \
        --out $RUNS/$name "$@" > "$RUNS/$name.log" 2>&1 || echo "$name failed" >> "$RUNS/$name.log"
    tail -3 "$RUNS/$name.log"
}
instruct_run one-or-two 15 "shapes:seed=1,n=1000000,task=short,turns=4,objects=1-2" "shapes:seed=1000000,n=64,task=short,objects=1-2"
instruct_run two-or-three 25 "shapes:seed=1,n=1000000,task=color+shape+exists,turns=8,objects=2-3" \
    "shapes:seed=1000000,n=96,task=color+shape+exists,objects=2-3" --tuned-from $RUNS/one-or-two
instruct_run full 60 "shapes:seed=1,n=1000000,task=all,turns=8" "shapes:seed=1000000,n=80,task=all" --tuned-from $RUNS/two-or-three
bring_back full
cp $RUNS/*.log "$OUT/"
