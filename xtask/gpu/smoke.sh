#!/usr/bin/env bash
# First command on a GPU machine: is the CUDA build usable (driver, NVRTC, kernels), and does it agree
# with the HF greedy reference on a tiny fixture? Also reports what the machine has.
source "$(dirname "$0")/common.sh"
{
    nvidia-smi -L || true
    ldconfig -p | grep -i -E "libcuda.so|nvrtc" || true
    ls /usr/local/cuda/lib64/libnvrtc* 2>/dev/null || true
    ls "$GPU_DIR"/* || true
    unpack_binary
    fixture=tests/fixtures/tiny-llava-hf5
    time "$BIN" generate --model $fixture --image tests/fixtures/images/shapes-80x60.png \
        --prompt "What is shown in this image?" --max-new-tokens 20 --json --backend cuda > /tmp/gen.json
    python3 - <<'PY'
import json
got = json.load(open("/tmp/gen.json"))
want = json.load(open("tests/fixtures/reference/tiny-llava-hf5.json"))["cases"]["shapes"]["greedy_ids"]
print("cuda greedy == HF reference:", got["generated_ids"] == want, got["stats"])
PY
    time "$BIN" train-twig --model $fixture --data shapes:seed=3,n=64 --eval-data shapes:seed=1000000,n=4 \
        --k 1 --t 2 --batch-size 4 --quiet --backend cuda --out /tmp/smoke-twig
    time "$BIN" train vision --config models/shapes-smol --steps 30 --batch-size 32 --quiet --backend cuda --out /tmp/smoke-vision
} 2>&1 | tee "$OUT/smoke.log"
