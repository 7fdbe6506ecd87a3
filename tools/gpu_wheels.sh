#!/usr/bin/env bash
# Fetch, on a machine with package-registry access, the wheels that tools/gpu_check.sh needs on a GPU
# machine whose image lacks them (yacs, pycocotools; the lent H100/H200 image has everything else).
# They land in .whl/ (git-ignored); carry that folder to the GPU machine, where gpu_check.sh installs them.
#
#   bash tools/gpu_wheels.sh [PYTHON_VERSION]     (the GPU machine's Python, default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
version=${1:-3.12}
rm -rf .whl && mkdir .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl yacs pycocotools
ls -l .whl
