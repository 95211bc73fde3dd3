#!/usr/bin/env bash
# The GPU check: the HF parity tests on the GPU backend, the decoding kernels against their
# default bodies and the kernel launches per decoding step (when packed), then `twigvlm bench`
# (vanilla, fastv, ttp, ssd, ttp+ssd) on a random model with LLaVA-1.5-7B's exact shapes, written
# on the machine itself (a 14 GB upload would not fit a command). Everything lands in $OUT. The
# packed build has no kernel autotuning: fixed default kernels from the first call.
#
# On the GPU machine (after `cargo xtask gpu-check --pack` here), carrying .gpu/check:
#     bash xtask/gpu/gpu-check.sh                       # cuda, llava-1.5-7b-shape, 256 new tokens
# On this machine, with the default (CPU) build:
#     bash xtask/gpu/gpu-check.sh flex llava-1b-shape 32
# (`cargo xtask gpu-check --local` does that.) PRESET `none`: the parity tests alone.
# Usage: gpu-check.sh [BACKEND] [PRESET] [NEW_TOKENS] [PARITY_TEST_BINARY]
set -euo pipefail
backend=${1:-cuda}
preset=${2:-llava-1.5-7b-shape}
new_tokens=${3:-256}
repo=$PWD
OUT=${OUT:-$repo/target/gpu-check}
mkdir -p "$OUT"
parts=.gpu/check

# Binaries: the packed CUDA build when carried, else this checkout's own release build.
if [ -f $parts/twigvlm.xz ]; then
    source "$(dirname "$0")/xz.sh"
    bin=/tmp/twigvlm-check parity=/tmp/parity-check
    unxz_to $bin < $parts/twigvlm.xz
    unxz_to $parity < $parts/parity.xz
    chmod +x $bin $parity
    # The kernels' tests, if this pack has them.
    for test in gpu_kernels launches; do
        [ -f $parts/$test.xz ] && unxz_to /tmp/$test-check < $parts/$test.xz && chmod +x /tmp/$test-check
    done
    # The test binary finds the fixtures under the path it was built in.
    built_in=$(cat $parts/built-in)
    [ -d "$built_in/tests/fixtures" ] || { mkdir -p "$(dirname "$built_in")"; ln -sfn "$repo" "$built_in"; }
else
    bin=target/release/twigvlm
    parity=${4:?without .gpu/check, name the parity test binary (cargo test --release --test parity --no-run prints it)}
fi

# Every test of the parity binary (all fixture layouts); compilation of the kernels dominates.
PARITY_LIMIT_S=180
# The decode profile runs on the small preset: the same kernels as the 7B one at a tenth of the
# loading time. cubecl profiles every kernel (each launch waits for the previous one), so its
# times are per-kernel GPU times, not the bench's; the compilations logged in between show whether
# decoding keeps compiling new kernels (one per KV length) after the first tokens.
PROFILE_PRESET=llava-1b-shape
PROFILE_TOKENS=48
profile_model() {
    local model=/tmp/check-$PROFILE_PRESET dir=/tmp/cubecl-profile
    [ -f $model/model.safetensors ] || "$bin" make-model --preset $PROFILE_PRESET --out $model > /dev/null
    mkdir -p $dir
    # cubecl reads cubecl.toml from the working directory.
    cat > $dir/cubecl.toml <<TOML
[profiling.logger]
level = "basic"
file = "$dir/profile.log"
[compilation.logger]
level = "basic"
file = "$dir/profile.log"
TOML
    (cd $dir && time "$bin" generate --model $model --image "$repo/examples/shapes-1.png" --backend "$backend" \
        --prompt "Describe the image." --max-new-tokens $PROFILE_TOKENS --json > $dir/generate.json) || echo "PROFILE FAILED"
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stats"])' $dir/generate.json || true
    wc -l $dir/*.log || true
    xz -c $dir/profile.log > "$OUT/profile.log.xz" 2>/dev/null || python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.compress(open(sys.argv[1],"rb").read()))' $dir/profile.log "$OUT/profile.log.xz"
}

{
    date -u
    nvidia-smi -L 2>/dev/null || true
    echo "== parity tests ($backend build of the test binary)"
    (cd tests && time timeout $PARITY_LIMIT_S "$parity" --nocapture) || echo "PARITY FAILED"
    for test in gpu_kernels launches; do
        [ -x /tmp/$test-check ] || continue
        echo "== $test tests"
        (cd tests && time timeout $PARITY_LIMIT_S /tmp/$test-check --nocapture) || echo "${test^^} FAILED"
    done
    [ "$preset" = none ] && exit 0
    if [ "$backend" != flex ]; then
        echo "== decode profile: cubecl's per-kernel GPU times, $PROFILE_PRESET, $PROFILE_TOKENS new tokens"
        profile_model
    fi
    echo "== random $preset model"
    model=/tmp/check-$preset
    [ -f $model/model.safetensors ] || time "$bin" make-model --preset "$preset" --out $model
    echo "== bench: $new_tokens new tokens, batch 1"
    time "$bin" --log-level info bench --model $model --twig $model/twig --twig-k 2 --backend "$backend" \
        --modes vanilla,fastv,ttp,ssd,ttp+ssd --max-new-tokens "$new_tokens" --repeats 1 \
        --data shapes:seed=1000000,n=1,task=describe --results-dir "$OUT" | tee "$OUT/bench.txt"
} 2>&1 | tee "$OUT/gpu-check.log"
