#!/usr/bin/env bash
# The ablation studies on one H200, in parts of under ten minutes each; each part builds what it
# needs (build/moe, with the libraries of scripts/setup.sh or a .devdeps prefix) and copies what
# it made to OUT. Run from the repo root. The corpus is data/corpus (scripts/fetch_corpus.sh), or
# data/corpus_xz: the same token shards with train.tok xz-compressed, unpacked on first use.
# Usage: experiments/run_studies_h200.sh OUT PART...
#   PART: tests (build everything, the cuda-labelled tests) | hash_layers | deepseekmoe |
#         upcycling | isoflop. Each study part writes OUT/<study><TAG>.tgz (results, summary,
#         every run's metrics.jsonl and config.toml, the run logs, in one file); an interrupted
#         part resumes where it was when run again on the same machine.
# Environment: EXTRA (run_study.sh's overrides for every run, e.g. "--set train.steps=2000"),
#   TAG (a suffix for the study's directories, so that runs with other EXTRA stay apart),
#   ISOFLOP_SEEDS (the sweep's seeds, default 1; the fit takes every seed's runs).
set -uo pipefail
TAG=${TAG:-}
out=${1:?usage: run_studies_h200.sh OUT PART...}
shift
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export MOE=$PWD/build/moe
mkdir -p "$out"
stamp() { echo "[$(date +%T)] $*" | tee -a "$out/timeline.txt"; }

unpack_corpus() {
  [[ -s data/corpus/train.tok ]] && return 0
  [[ -d data/corpus_xz ]] || { echo "no data/corpus and no data/corpus_xz" >&2; return 1; }
  mkdir -p data/corpus
  cp data/corpus_xz/* data/corpus/
  python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as src, open(sys.argv[2], "wb") as dst: shutil.copyfileobj(src, dst, 1 << 24)' \
    data/corpus/train.tok.xz data/corpus/train.tok && rm data/corpus/train.tok.xz
  stamp "corpus unpacked: $(du -sh data/corpus | cut -f1)"
}

build() {  # build TARGET: configure once, then build TARGET (all, or moe for the studies)
  [[ -f build/build.ninja ]] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" \
      > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; return 1; }
  cmake --build build -j "$(nproc)" --target "$1" > "$out/build_$1.log" 2>&1 \
    || { grep -E "error|FAILED" -A5 "$out/build_$1.log" | head -60; return 1; }
  stamp "built $1"
}

collect() {  # collect STUDY WORK: the tables, each run's metrics and config, the logs -> OUT/STUDY.tgz
  local study=$1 work=$2 run
  rm -rf "${out:?}/$study" && mkdir -p "$out/$study"
  cp "$work"/*.csv "$work"/*.md "$out/$study/" 2> /dev/null
  for run in "$work"/work/runs/*/ "$work"/work/runs/*/seed_*/; do
    [[ -f $run/metrics.jsonl ]] || continue
    local rel=${run#"$work"/work/runs/}
    mkdir -p "$out/$study/runs/$rel"
    cp "$run/metrics.jsonl" "$run/config.toml" "$out/$study/runs/$rel" 2> /dev/null
  done
  mkdir -p "$out/$study/logs" && cp "$work"/work/logs/*.log "$out/$study/logs/" 2> /dev/null
  tar czf "$out/$study.tgz" -C "$out" "$study" && rm -rf "${out:?}/$study"
}

study() {  # study NAME RUN_STUDY_ARGS...: run_study.sh over experiments/NAME into runs/studies/NAME$TAG
  local name=$1 work=runs/studies/$1${TAG:-}
  shift
  stamp "study $name$TAG $* (EXTRA: ${EXTRA:-none})"
  experiments/run_study.sh "$@" "experiments/$name" "$work" > "$out/$name${TAG:-}.out" 2>&1
  local rc=$?
  collect "$name${TAG:-}" "$work"
  stamp "study $name${TAG:-} done (rc $rc)"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"
for part in "$@"; do
  case $part in
    tests)
      build all || exit 1
      ctest --test-dir build -L cuda --output-on-failure --timeout 300 > "$out/ctest_cuda.log" 2>&1
      stamp "cuda tests: $(grep -E 'tests passed' "$out/ctest_cuda.log")"
      ;;
    hash_layers | deepseekmoe)
      unpack_corpus && build moe || exit 1
      study "$part" --seeds 1,2,3 --parallel 6
      ;;
    upcycling)
      unpack_corpus && build moe || exit 1
      study upcycling --seeds 1,2 --parallel 4
      ;;
    isoflop)
      unpack_corpus && build moe || exit 1
      study isoflop --seeds "${ISOFLOP_SEEDS:-1}" --parallel 5
      build/moe scaling isoflop runs/studies/isoflop${TAG:-}/work/runs/*/seed_* --json "$out/isoflop_fit.json" \
        > "$out/isoflop_fit.txt" 2>&1
      ;;
    *) echo "run_studies_h200.sh: unknown part '$part'" >&2; exit 2 ;;
  esac
done
