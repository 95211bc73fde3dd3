#!/usr/bin/env bash
# Here, after train-demo.sh or continue-demo.sh ran on the GPU: joins each returned run's tar
# parts (NAME.tar.part-*) into target/gpu-runs/.
# Usage: xtask/gpu/unpack.sh DIR (the folder the returned files were copied to)
set -euo pipefail
from=${1:?usage: unpack.sh DIR (the folder the GPU run's files came back to)}
mkdir -p target/gpu-runs
for run in $(ls "$from" | sed -n "s/\\.tar\\.part-.*//p" | sort -u); do
    cat "$from/$run.tar.part-"* | tar -C target/gpu-runs -xf -
done
cp "$from"/*.log target/gpu-runs/
ls -la target/gpu-runs
