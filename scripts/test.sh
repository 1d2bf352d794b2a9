#!/usr/bin/env bash
# Runs the whole test suite (unit, parallel under mpirun, and cuda: skipped without a GPU).
# Usage: scripts/test.sh [ctest args...]    (after scripts/setup.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900 "$@"
