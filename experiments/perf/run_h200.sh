#!/usr/bin/env bash
# The GPU-host session: build, the cuda-labelled tests, then the benchmarks recorded in
# experiments/perf/README.md. Run from the repo root on the H200 host with .devdeps carried.
# Usage: experiments/perf/run_h200.sh OUT_DIR [tests|bench|dp|quickstart|parallel|mp2|plan|scale4|scale8|all]
set -uo pipefail
out=${1:?out dir}
what=${2:-all}
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if [[ ! -x build/moe ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" > "$out/configure.log" 2>&1 \
    || { tail -30 "$out/configure.log"; exit 1; }
  # MOE_BUILD_TARGET=moe builds the executable only (benchmarks and runs without the tests).
  cmake --build build -j "$(nproc)" --target "${MOE_BUILD_TARGET:-all}" > "$out/build.log" 2>&1 || { grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
fi
if [[ $what == tests || $what == all ]]; then
  ctest --test-dir build -L cuda --output-on-failure --timeout 300 > "$out/ctest_cuda.log" 2>&1
  tail -25 "$out/ctest_cuda.log"
fi
if [[ $what == bench || $what == all ]]; then
  for cfg in gpt2_small_dense gpt2_small_moe64 moe_small; do
    build/moe bench train experiments/perf/$cfg.toml --warmup 3 --steps 10 2>&1 | tail -1 | tee "$out/bench_$cfg.json"
  done
fi
if [[ $what == dp || $what == all ]]; then
  # Two GPUs with one micro-batch each against one GPU accumulating two (the same global batch).
  q=experiments/quickstart/config.toml
  common=(--set train.steps=20 --set train.log_every=1 --set train.eval_every=0 --set train.micro_batch_size=8
          --set train.overwrite=true)
  build/moe train $q "${common[@]}" --set train.grad_accum=2 --set train.run_dir=runs/dp1 > "$out/dp1.log" 2>&1
  mpirun --oversubscribe -np 2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE build/moe train $q "${common[@]}" \
    --set train.grad_accum=1 --set train.run_dir=runs/dp2 > "$out/dp2.log" 2>&1
  python3 experiments/perf/compare_losses.py runs/dp1/metrics.jsonl runs/dp2/metrics.jsonl | tee "$out/dp_compare.txt"
fi
if [[ $what == parallel ]]; then
  # Issue 4 on two GPUs: the one-GPU run (2 micro-batches accumulated) against each layout.
  q=experiments/quickstart/config.toml
  common=(--set train.steps=20 --set train.log_every=1 --set train.eval_every=0 --set train.micro_batch_size=8
          --set optim.lr=1e-3 --set train.save_every=0 --set train.overwrite=true)
  build/moe train $q "${common[@]}" --set train.grad_accum=2 --set train.run_dir=runs/ref > /tmp/ref.log 2>&1
  mpi=(mpirun --oversubscribe -np 2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE)
  : > "$out/layouts.txt"
  for layout in "ep=1 zero=0" "ep=1 zero=1" "ep=1 zero=2" "ep=1 zero=3" "ep=2 zero=0" "ep=2 zero=2"; do
    set -- $layout; name="${1}_${2}"
    "${mpi[@]}" build/moe train $q "${common[@]}" --set train.grad_accum=1 --set parallel.$1 --set parallel.$2 \
      --set train.run_dir=runs/$name > /tmp/$name.log 2>&1 || tail -3 /tmp/$name.log
    echo "== $layout: $(python3 experiments/perf/compare_losses.py runs/ref/metrics.jsonl runs/$name/metrics.jsonl | tail -1)" | tee -a "$out/layouts.txt"
  done
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 2>&1 | tail -1 | tee "$out/bench_moe_small_1gpu.json"
  for layout in "ep=1" "ep=2"; do
    "${mpi[@]}" build/moe bench train experiments/perf/moe_small.toml --set parallel.$layout --warmup 3 --steps 10 2>&1 \
      | tail -1 | tee "$out/bench_moe_small_2gpu_$layout.json"
  done
  "${mpi[@]}" build/moe bench dispatch experiments/perf/moe_small.toml --set parallel.ep=2 2>&1 | tail -1 \
    | tee "$out/bench_dispatch_ep2.json"
fi
mpi=(mpirun --oversubscribe -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
     -x NVSHMEM_DISABLE_NVLS)
bench() {  # bench NAME NP CONFIG [--set ...]: one JSON line into $out/bench_NAME.json
  local name=$1 np=$2 cfg=$3; shift 3
  echo "[$(date +%T)] bench $name" >> "$out/timeline.txt"
  "${mpi[@]}" -np "$np" build/moe bench train "$cfg" "$@" 2>&1 | tail -1 | tee "$out/bench_$name.json"
}
if [[ $what == mp2 ]]; then
  # Issue 5 on two GPUs: TP 2 and PP 2 (both schedules, recomputation) against one GPU over 20
  # steps (4 micro-batches of 8 sequences per step), then MoE-small's speed in each layout.
  q=experiments/quickstart/config.toml
  common=(--set train.steps=20 --set train.log_every=1 --set train.eval_every=0 --set train.micro_batch_size=8
          --set train.grad_accum=4 --set optim.lr=1e-3 --set train.save_every=0 --set train.overwrite=true)
  build/moe train $q "${common[@]}" --set train.run_dir=runs/mp_ref > "$out/mp_ref.log" 2>&1 || tail -5 "$out/mp_ref.log"
  : > "$out/layouts_mp2.txt"
  IFS=, read -ra mp_layouts <<< "${MP_LAYOUTS:-tp=2,pp=2,pp=2 pp_schedule=gpipe,tp=2 recompute,pp=2 recompute}"
  for layout in "${mp_layouts[@]}"; do
    name=$(echo "$layout" | tr ' =' '__'); sets=()
    for kv in $layout; do
      if [[ $kv == recompute ]]; then sets+=(--set train.recompute=true); else sets+=(--set "parallel.$kv"); fi
    done
    "${mpi[@]}" -np 2 build/moe train $q "${common[@]}" "${sets[@]}" --set train.run_dir=runs/$name \
      > "$out/mp_$name.log" 2>&1 || tail -5 "$out/mp_$name.log"
    echo "== $layout: $(python3 experiments/perf/compare_losses.py runs/mp_ref/metrics.jsonl runs/$name/metrics.jsonl | tail -1)" | tee -a "$out/layouts_mp2.txt"
  done
  grep -h "bubble" "$out"/mp_pp_2*.log | tail -2 | tee -a "$out/layouts_mp2.txt"
  m=experiments/perf/moe_small.toml
  bench moe_small_1gpu_accum4 1 $m --set train.grad_accum=4 --warmup 2 --steps 5
  bench moe_small_tp2 2 $m --set train.grad_accum=4 --set parallel.tp=2 --warmup 2 --steps 5
  bench moe_small_pp2 2 $m --set train.grad_accum=4 --set parallel.pp=2 --warmup 2 --steps 5
fi
if [[ $what == plan ]]; then
  # Peak memory of moe bench for the `moe plan` estimate test (tests/train/test_plan.cpp).
  bench plan_gpt2_small_moe64 1 experiments/perf/gpt2_small_moe64.toml --warmup 2 --steps 2
  bench plan_moe_small 1 experiments/perf/moe_small.toml --warmup 2 --steps 2
  for layout in "ep=1 zero=0" "ep=1 zero=1" "ep=1 zero=2" "ep=1 zero=3" "ep=2 zero=0" "ep=2 zero=3"; do
    set -- $layout
    bench "plan_moe_small_2gpu_${1}_${2}" 2 experiments/perf/moe_small.toml --set parallel.$1 --set parallel.$2 \
      --warmup 2 --steps 2
  done
fi
if [[ $what == scale4 || $what == scale8 ]]; then
  # Issues 6 and 7: experiments/scaling/run_scaling.sh (its README has the tables; PARTS and
  # CONFIGS from the environment split it over device calls).
  experiments/scaling/run_scaling.sh "$out/scaling" "${what#scale}"
  python3 experiments/scaling/summarize.py "$out/scaling" | tee "$out/scaling/summary.md"
fi
if [[ $what == quickstart || $what == all ]]; then
  scripts/quickstart.sh > "$out/quickstart.log" 2>&1; tail -8 "$out/quickstart.log"
fi
