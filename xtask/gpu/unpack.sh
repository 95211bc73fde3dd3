#!/usr/bin/env bash
# Here, after train-demo.sh ran on the GPU: joins the returned parts into target/gpu-runs/.
# Usage: xtask/gpu/unpack.sh FILES_AT
set -euo pipefail
from=${1:?usage: unpack.sh FILES_AT (files_at of the device reply)}
mkdir -p target/gpu-runs
for name in a16 w4; do
    ls "$from/$name.tar.part-"* > /dev/null 2>&1 && cat "$from/$name.tar.part-"* | tar -C target/gpu-runs -xf -
done
ls -la target/gpu-runs
