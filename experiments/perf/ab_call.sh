#!/usr/bin/env bash
# One run on the GPU machine for a kernel change: build `moe` and the named cuda test executables,
# run QUICK (a Catch2 filter of the changed kernel's cases in cuda_grouped_gemm) first, so that a
# wrong kernel shows before any timing, then the same-run A/B against the tree before the change
# (.ab/base: `git archive` of the old commit's build inputs), then the named cuda suites whole.
# Each part runs under its own time limit, so what finished comes back.
# Usage (repo root, .devdeps and .ab carried):
#   [LAYERS=...] [QUICK=filter] [TESTS="cuda_grouped_gemm cuda_moe_layer"] experiments/perf/ab_call.sh OUT
set -uo pipefail
out=${1:?out dir}
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
tests=${TESTS:-cuda_grouped_gemm cuda_moe_layer}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" > "$out/configure.log" 2>&1 \
  || { tail -30 "$out/configure.log"; exit 1; }
# shellcheck disable=SC2086  # the test names are separate targets
cmake --build build -j "$(nproc)" --target moe $tests > "$out/build.log" 2>&1 \
  || { grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
if [[ -n ${QUICK:-} ]]; then
  timeout "${QUICK_SECONDS:-90}" build/tests/cuda/cuda_grouped_gemm "$QUICK" > "$out/quick.log" 2>&1
  echo "quick tests exit $?: $(tail -2 "$out/quick.log" | tr '\n' ' ')"
fi
LAYERS=${LAYERS-switch mixtral fine_grained} timeout "${AB_SECONDS:-240}" experiments/perf/ab_trees.sh "$out/ab" .ab/base
echo "ab_trees.sh exit $?"
regex=$(tr ' ' '|' <<< "$tests")
timeout "${CTEST_SECONDS:-170}" ctest --test-dir build -R "^($regex)\$" --output-on-failure --timeout 160 \
  > "$out/ctest_cuda.log" 2>&1
grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest_cuda.log" | tail -10
