#!/usr/bin/env bash
# Fuzzes the untrusted-input readers with libFuzzer (ASan + UBSan): the TOML config loader, the
# safetensors reader, the token-shard reader and the Megatron .idx reader, each for a fixed time.
# Not part of CI: CTest replays the committed corpus (tests/fuzz/corpus) instead.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 600)] [TARGET...]
#   MOE_FUZZ_MERGE=1  also merge the inputs that add coverage into tests/fuzz/corpus/<target>/
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-600}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(config_toml safetensors token_shard megatron_idx)

# clang brings libFuzzer (libclang-rt-dev) and, for Eigen's OpenMP, libomp-dev.
missing=()
for p in clang libclang-rt-dev libomp-dev; do dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" > /dev/null
fi

build=build-fuzz
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_CUDA=OFF -DMOE_FUZZ=ON \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ > "$build/configure.log" 2>&1 || {
  cat "$build/configure.log"; exit 1; }
ninja -C "$build" -j "${MOE_FUZZ_JOBS:-$(nproc)}" "${targets[@]/#/fuzz_}"

status=0
for target in "${targets[@]}"; do
  work="$build/corpus/$target"
  artifacts="$build/artifacts/$target/"
  mkdir -p "$work" "$artifacts"
  echo "fuzz: $target for ${seconds}s (corpus $work, seeds tests/fuzz/corpus/$target)"
  if ! "$build/tests/fuzz/fuzz_$target" "$work" "tests/fuzz/corpus/$target" -max_total_time="$seconds" \
      -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$artifacts" \
      > "$build/fuzz_$target.log" 2>&1; then
    status=1
    echo "fuzz: $target FOUND A PROBLEM: see $build/fuzz_$target.log and $artifacts"
  fi
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done )|ERROR:" "$build/fuzz_$target.log" || true
  if [[ -n "${MOE_FUZZ_MERGE:-}" ]]; then
    "$build/tests/fuzz/fuzz_$target" -merge=1 "tests/fuzz/corpus/$target" "$work" > /dev/null 2>&1
  fi
done
exit $status
