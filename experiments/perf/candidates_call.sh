#!/usr/bin/env bash
# One run on the GPU machine for candidate kernel trees (experiments/perf/probes/make_trees.sh with
# WITH_TESTS=1, so that each tree carries its tests): in each TREE, build `moe` and cuda_grouped_gemm and
# run its cases matching QUICK (a Catch2 filter; with FULL=1 the whole suite), each under its own
# time limit; then the same-run A/B of the trees against this checkout (ab_trees.sh: the standard
# layers and MoE-small). A tree whose build or tests fail is left out of the A/B.
# Usage (repo root, .devdeps and .ab carried):
#   [QUICK=filter] [FULL=1] [LAYERS=...] experiments/perf/candidates_call.sh OUT TREE...
set -uo pipefail
out=${1:?out dir}; shift
(($# > 0)) || { echo "candidates_call.sh: name at least one tree" >&2; exit 2; }
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
passed=()
for tree in "$@"; do
  name=$(basename "$tree")
  if ! (cd "$tree" && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" \
        && cmake --build build -j "$(nproc)" --target moe cuda_grouped_gemm) > "$out/build_$name.log" 2>&1; then
    echo "$name: build failed"; grep -E "error|FAILED" -A5 "$out/build_$name.log" | head -30; continue
  fi
  filter=()
  [[ ${FULL:-0} == 1 ]] || filter=("${QUICK:-[grouped]}")
  timeout "${TEST_SECONDS:-150}" "$tree/build/tests/cuda/cuda_grouped_gemm" "${filter[@]}" > "$out/tests_$name.log" 2>&1
  rc=$?
  echo "$name: cuda_grouped_gemm ${filter[*]:-(all)} exit $rc: $(tail -3 "$out/tests_$name.log" | tr '\n' ' ')"
  ((rc == 0)) && passed+=("$tree")
done
((${#passed[@]} > 0)) || { echo "candidates_call.sh: no tree passed its tests"; exit 1; }
timeout "${AB_SECONDS:-300}" experiments/perf/ab_trees.sh "$out/ab" "${passed[@]}"
echo "ab_trees.sh exit $?"
