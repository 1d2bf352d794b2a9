#!/usr/bin/env bash
# A fingerprint of the source tree a GPU run builds (the engine's and the tests' sources and the build
# files), printed by the run scripts beside the GPU's name. Run it here on a clean checkout to check
# that a run built the commit it is recorded under (the GPU machine's copy has no reliable git state).
# Usage (repo root): experiments/perf/tree_hash.sh
set -euo pipefail
find CMakeLists.txt src routing experts kernels parallel tests -type f \
    \( -name '*.txt' -o -name '*.cmake' -o -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) \
    2> /dev/null | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12
