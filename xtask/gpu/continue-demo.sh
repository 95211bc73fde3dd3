#!/usr/bin/env bash
# Continues stage 2 of the committed demo model on a GPU machine: one `train instruct` run from the
# committed tuned layers (which travel in pack.sh's payload), with the committed vision tower and
# projector frozen, the attention of the top 16 layers tuned and the chat replay mixed in, as the
# last runs of `cargo xtask train-demo` do on the CPU, but with a larger batch. The run is fitted
# to SECONDS by --time-limit. With TWIG_SECONDS, a twig is then trained for the new base
# (`train-twig` with the TWIG ARGS given, which are xtask/src/demo.rs's TWIG_ARGS), fitted to
# TWIG_SECONDS. Brings back (under $OUT) the run directories as tar parts of at most 16 MiB and
# their logs; `xtask/gpu/unpack.sh DIR` joins them on the development machine.
# Usage: xtask/gpu/continue-demo.sh BACKEND SECONDS DATA LR [TWIG_SECONDS TWIG ARGS...]
#        (BACKEND cuda on the GPU; flex is a dry run here)
source "$(dirname "$0")/common.sh"
usage="usage: continue-demo.sh BACKEND SECONDS DATA LR [TWIG_SECONDS TWIG ARGS...]"
backend=${1:?$usage}
budget=${2:?$usage}
data=${3:?$usage (DATA e.g. shapes:seed=18,n=100000,task=where+describe,turns=6)}
lr=${4:?$usage}
twig_budget=${5:-}
shift $(($# < 5 ? $# : 5))
BATCH=16
EVAL_EVERY=200
TWIG_EVAL_EVERY=50
MODEL=/tmp/model-continued
join_payload
unpack_binary
unpack_language_model 2>&1 | tail -3
# This machine's copy of the tree came without the committed tuned layers (pack.sh).
[ -f models/shapes-smol/language_model_tuned.safetensors ] || cp $PARTS/language_model_tuned.safetensors models/shapes-smol/
train_instruct --tuned-from models/shapes-smol \
    --batch-size $BATCH --lr "$lr" --warmup 0.05 --steps $(steps_within $budget) --time-limit "$budget" --eval-every $EVAL_EVERY \
    --checkpoint-every 100000 --data "$data" --replay-data xtask/data/chat-replay-smollm2.json \
    --eval-data shapes:seed=1000000,n=128,task=short --backend "$backend" --quiet --log-level info \
    --out $RUNS/continue > $RUNS/continue.log 2>&1 || echo "continue failed" >> $RUNS/continue.log
tail -4 $RUNS/continue.log
# Packed at once, so that a twig run cut by the command's time limit cannot take the main result
# with it.
bring_back continue
if [ -n "$twig_budget" ] && [ -f $RUNS/continue/language_model_tuned.safetensors ]; then
    # The continued model, assembled as prepare-demo does (it finds the imported LM in /tmp).
    rm -rf $MODEL && cp -r models/shapes-smol $MODEL && rm -rf $MODEL/twig
    cp $RUNS/continue/language_model_tuned.safetensors $MODEL/
    "$BIN" prepare-demo --model $MODEL --cache /tmp > /dev/null
    "$BIN" train-twig --model $MODEL "$@" --steps $(steps_within $twig_budget) --time-limit "$twig_budget" --eval-every $TWIG_EVAL_EVERY \
        --checkpoint-every 100000 --backend "$backend" --quiet --log-level info \
        --out $RUNS/twig > $RUNS/twig.log 2>&1 || echo "twig failed" >> $RUNS/twig.log
    tail -3 $RUNS/twig.log
    bring_back twig
fi
