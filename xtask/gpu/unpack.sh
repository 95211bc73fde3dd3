#!/usr/bin/env bash
# Here, after train-demo.sh ran on the GPU: joins the returned parts into target/gpu-runs/.
# Usage: xtask/gpu/unpack.sh FILES_AT
set -euo pipefail
from=${1:?usage: unpack.sh FILES_AT (files_at of the device reply)}
mkdir -p target/gpu-runs
cat "$from/full.tar.part-"* | tar -C target/gpu-runs -xf -
cp "$from"/*.log target/gpu-runs/
ls -la target/gpu-runs
