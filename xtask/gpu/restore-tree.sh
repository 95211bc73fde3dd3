#!/usr/bin/env bash
# Undoes what pack.sh did to git's index: the heavy files it took out for the GPU commands are
# tracked again (their content never left the disk).
set -euo pipefail
while read -r path; do
    git reset -q -- "$path"
    sed -i "\|^/$path\$|d" .git/info/exclude
done < xtask/gpu/heavy-paths
git status --short
