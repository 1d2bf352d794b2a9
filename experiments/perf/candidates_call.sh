#!/usr/bin/env bash
# One run on the GPU machine for candidate kernel patches (experiments/perf/probes/*.patch, each
# against this checkout): build `moe` and cuda_grouped_gemm here; then for each PATCH apply it, build
# again (only what it changes recompiles), keep the two binaries under .cand/<name>/build/, run the
# cuda_grouped_gemm cases matching QUICK (a Catch2 filter; FULL=1: the whole suite) under a time
# limit, and take the patch back out. Last, the same-run A/B of the candidates whose tests passed
# against this checkout (ab_trees.sh: the standard layers and MoE-small).
# Usage (repo root, .devdeps carried):
#   [QUICK=filter] [FULL=1] [LAYERS=...] [TRAIN=0] experiments/perf/candidates_call.sh OUT PATCH...
set -uo pipefail
out=${1:?out dir}; shift
(($# > 0)) || { echo "candidates_call.sh: name at least one patch" >&2; exit 2; }
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
echo "tree $(experiments/perf/tree_hash.sh)" | tee -a "$out/gpu.txt"  # the sources this run builds
apply() {  # patch [-R]: all of it or nothing (a half-applied patch would stay in the tree for later runs)
  local p=$1; shift
  git apply "$@" "$p" 2> /dev/null && return
  patch -p1 -s -t -N --dry-run "$@" < "$p" > /dev/null && patch -p1 -s -t -N "$@" < "$p"
}
build() {  # log
  { [[ -f build/build.ninja ]] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D"; } \
    > "$1" 2>&1 && cmake --build build -j "$(nproc)" --target moe cuda_grouped_gemm >> "$1" 2>&1
}
build "$out/build_base.log" || { grep -E "error|FAILED" -A5 "$out/build_base.log" | head -30; exit 1; }
passed=()
for p in "$@"; do
  name=$(basename "$p" .patch)
  apply "$p" || { echo "$name: the patch does not apply"; continue; }
  if build "$out/build_$name.log"; then
    mkdir -p ".cand/$name/build"
    cp build/moe build/tests/cuda/cuda_grouped_gemm ".cand/$name/build/"
  else
    echo "$name: build failed"; grep -E "error|FAILED" -A5 "$out/build_$name.log" | head -30
  fi
  apply "$p" -R || { echo "$name: the patch does not come back out; stopping"; exit 1; }
  [[ -x .cand/$name/build/moe ]] || continue
  filter=()
  [[ ${FULL:-0} == 1 ]] || filter=("${QUICK:-[grouped]}")
  timeout "${TEST_SECONDS:-150}" ".cand/$name/build/cuda_grouped_gemm" "${filter[@]}" > "$out/tests_$name.log" 2>&1
  rc=$?
  echo "$name: cuda_grouped_gemm ${filter[*]:-(all)} exit $rc: $(tail -3 "$out/tests_$name.log" | tr '\n' ' ')"
  ((rc == 0)) && passed+=(".cand/$name")
done
((${#passed[@]} > 0)) || { echo "candidates_call.sh: no candidate passed its tests"; exit 1; }
timeout "${AB_SECONDS:-300}" experiments/perf/ab_trees.sh "$out/ab" "${passed[@]}"
echo "ab_trees.sh exit $?"
