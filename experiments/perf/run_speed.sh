#!/usr/bin/env bash
# One GPU-host call for the single-H200 speed issues (13, 14): build, the cuda tests, then the
# engine's benches and their PyTorch anchors side by side, in the same run.
# Usage (repo root on the H200 host, .devdeps carried):
#   experiments/perf/run_speed.sh OUT_DIR [PARTS]   PARTS: comma list of build,tests,train,anchor,attention
#                                                    (default all of them), nolog (MoE-small without a
#                                                    logging step in the window), noside (nolog with the shared
#                                                    experts on the compute stream), train_noside (MoE-small's
#                                                    breakdown with the shared experts on the compute stream), host
#                                                    (MoE-small's ops on 64 tokens: the host's own step time), dense
#                                                    (MoE-small's dense GEMMs, engine and torch.mm, and the fp32
#                                                    write and copy rates), noupdate (nolog with the
#                                                    optimizer update on the compute stream), update (nolog with
#                                                    the update on its own stream), update_ab (noupdate and update
#                                                    alternately, three times each), nolog_kernels (nolog once per
#                                                    kernel of GROUPED_KERNELS), layer (moe bench layer at the
#                                                    standard shapes), moe64, moeloop, ops, layer_anchor
#                                                    (PyTorch MoE layer anchor), profile (profile_layer.sh: Nsight
#                                                    Compute counters), moe_anchor (PyTorch MoE-small
#                                                    anchor), and ab: MoE-small with another source tree
#                                                    (AB_DIR, default .ab) built beside this one and run in
#                                                    turn (ab_trees.sh, no layers)
# GROUPED_KERNELS (space-separated --grouped-kernel names) lists the kernels the layer part benches (default
# "wgmma mma_sync") and the ones nolog_kernels runs MoE-small with (default "wgmma wgmma_narrow").
# CUDA_TESTS_EXCLUDE (a ctest -E regex) leaves cuda tests out of the tests part (ones already run on this tree);
# TRAIN_CONFIGS (default "gpt2_small_dense moe_small") lists the configs the train part benches with --breakdown.
# ANCHOR_ARGS (e.g. --smoke) goes to the two MoE anchor scripts. Writes OUT_DIR/*.json|log and prints a short
# table last.
set -uo pipefail
out=${1:?out dir}
parts=${2:-build,tests,train,anchor,attention}
has() { [[ ",$parts," == *",$1,"* ]]; }
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader | tee "$out/gpu.txt"
echo "tree $(experiments/perf/tree_hash.sh)" | tee -a "$out/gpu.txt"  # the sources this run builds

if has build; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" > "$out/configure.log" 2>&1 \
    || { tail -30 "$out/configure.log"; exit 1; }
  # moe, and with the tests part the executables the cuda label runs (test names are target names)
  targets=moe
  if has tests; then
    targets="moe $(ctest --test-dir build -L cuda -N | sed -n 's/^ *Test *#[0-9]*: //p' | tr '\n' ' ')"
  fi
  cmake --build build -j "$(nproc)" --target $targets > "$out/build.log" 2>&1 \
    || { grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
fi
if has tests; then
  ctest --test-dir build -L cuda ${CUDA_TESTS_EXCLUDE:+-E "$CUDA_TESTS_EXCLUDE"} --output-on-failure --timeout 300 \
    > "$out/ctest_cuda.log" 2>&1
  grep -E "tests passed|tests failed|Failed|\*\*\*" "$out/ctest_cuda.log" | tail -15
fi
if has train; then
  for cfg in ${TRAIN_CONFIGS:-gpt2_small_dense moe_small}; do
    build/moe bench train experiments/perf/$cfg.toml --warmup 3 --steps 10 --breakdown 2>&1 | tail -1 \
      | tee "$out/bench_$cfg.json"
  done
fi
if has train_noside; then  # MoE-small's breakdown with the shared experts on the compute stream (no overlap to blur it)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --breakdown \
    --set parallel.shared_expert_stream=false 2>&1 | tail -1 | tee "$out/bench_moe_small_noside.json"
fi
if has host; then  # MoE-small's ops on one sequence of 64 tokens: the device has almost nothing to do, so the step time is the host's
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --breakdown --set train.micro_batch_size=1 \
    --set model.seq_len=64 --set train.log_every=1000 2>&1 | tail -1 | tee "$out/bench_moe_small_host.json"
fi
if has nolog; then  # MoE-small with no logging step among the timed ones (train.log_every past the window)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 2>&1 \
    | tail -1 | tee "$out/bench_moe_small_nolog.json"
fi
if has nolog_kernels; then  # MoE-small as nolog, once per grouped kernel of GROUPED_KERNELS (tile widths compared)
  for kernel in ${GROUPED_KERNELS:-wgmma wgmma_narrow}; do
    build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 \
      --grouped-kernel "$kernel" 2>&1 | tail -1 | tee "$out/bench_moe_small_nolog_$kernel.json"
  done
fi
if has noside; then  # MoE-small as nolog, the shared experts on the compute stream (parallel.shared_expert_stream off)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 \
    --set parallel.shared_expert_stream=false 2>&1 | tail -1 | tee "$out/bench_moe_small_nolog_noside.json"
fi
if has noupdate; then  # MoE-small as nolog, the update on the compute stream (parallel.overlap_update off)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 \
    --set parallel.overlap_update=false 2>&1 | tail -1 | tee "$out/bench_moe_small_nolog_noupdate.json"
fi
if has update; then  # MoE-small as nolog, the update on its own low-priority stream (parallel.overlap_update on)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 \
    --set parallel.overlap_update=true 2>&1 | tail -1 | tee "$out/bench_moe_small_nolog_update.json"
fi
if has update_ab; then  # noupdate and update alternately, three of each: one pair is too few to decide the default
  for round in 1 2 3; do
    for overlap in false true; do
      build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --set train.log_every=1000 \
        --set parallel.overlap_update=$overlap 2>&1 | tail -1 | sed "s|^{|{\"overlap_update\":$overlap,|" \
        >> "$out/bench_moe_small_update_ab.jsonl"
    done
  done
fi
if has layer; then  # one MoE layer at the anchor shapes and MoE-small's, against the dense chain of equal FLOPs
  for cfg in layers/fine_grained layers/mixtral layers/switch moe_small; do
    for kernel in ${GROUPED_KERNELS:-wgmma mma_sync}; do
      build/moe bench layer experiments/perf/$cfg.toml --tokens 16384 --warmup 3 --iters 10 --breakdown \
        --grouped-kernel "$kernel" 2>&1 | tail -1 | tee -a "$out/bench_layer.jsonl"
    done
  done
fi
if has moe64; then  # GPT-2 small with 64 x 384 top-6 experts in every FFN
  build/moe bench train experiments/perf/gpt2_small_moe64.toml --warmup 3 --steps 10 --breakdown 2>&1 | tail -1 \
    | tee "$out/bench_gpt2_small_moe64.json"
fi
if has moeloop; then  # MoE-small with the per-expert loop, against the default (grouped on CUDA)
  build/moe bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 --breakdown \
    --set moe.experts_impl=loop 2>&1 | tail -1 | tee "$out/bench_moe_small_loop.json"
fi
if has ops; then
  # MoE-small's expert GEMMs (64 x 1536 rows, 768, 384), balanced and with uneven experts (skew 1, 2),
  # once per kernel of GROUPED_KERNELS
  for kernel in ${GROUPED_KERNELS:-wgmma mma_sync}; do
    for skew in 0 1 2; do
      build/moe bench op grouped_gemm --skew $skew --warmup 5 --iters 20 --grouped-kernel "$kernel" 2>&1 | tail -1 \
        | tee -a "$out/op_grouped_gemm.jsonl"
    done
  done
  build/moe bench op add_layernorm --batch 16 --seq 1024 --width 768 --warmup 5 --iters 20 2>&1 | tail -1 \
    | tee "$out/op_add_layernorm.json"
  # MoE-small's residual add + RMSNorm and its rotary embedding of q and k (16 x 1024 tokens, 12 heads of 64)
  build/moe bench op add_rmsnorm --batch 16 --seq 1024 --width 768 --warmup 5 --iters 20 2>&1 | tail -1 \
    | tee "$out/op_add_rmsnorm.json"
  build/moe bench op rope --batch 16 --seq 1024 --heads 12 --head-dim 64 --warmup 5 --iters 20 2>&1 | tail -1 \
    | tee "$out/op_rope.json"
  # the LM head's cross-entropy over one head chunk (4096 tokens) of GPT-2's vocabulary
  build/moe bench op cross_entropy --batch 4 --seq 1024 --vocab 50304 --warmup 5 --iters 20 2>&1 | tail -1 \
    | tee "$out/op_cross_entropy.json"
  # MoE-small's router (16 x 1024 tokens, 64 experts, top-6) with the Switch statistics, fused and unfused
  build/moe bench op router --batch 16 --seq 1024 --experts 64 --top-k 6 --warmup 5 --iters 50 2>&1 | tail -1 \
    | tee "$out/op_router.json"
fi
if has dense; then  # MoE-small's dense layers' GEMMs, the engine's and torch.mm, and the fp32 write / copy rates
  for shape in "768 2304" "768 768" "768 1536"; do
    read -r d_in d_out <<< "$shape"
    build/moe bench op dense_gemm --batch 16 --seq 1024 --d-model "$d_in" --d-expert "$d_out" 2>&1 | tail -1 \
      | tee -a "$out/dense_gemm.jsonl"
  done
  python3 experiments/perf/anchors/dense_gemm_anchor.py 2>&1 | grep '^{' | tee -a "$out/dense_gemm.jsonl"
fi
if has anchor; then
  python3 experiments/perf/anchors/gpt2_anchor.py --warmup 3 --steps 10 2>&1 | grep '^{' | tee "$out/anchor_gpt2.jsonl"
fi
if has layer_anchor; then  # one MoE layer fwd+bwd at the standard shapes: loop, grouped_mm, Qwen2-MoE block, dense
  python3 experiments/perf/anchors/moe_layer_anchor.py --warmup 3 --iters 10 ${ANCHOR_ARGS:-} \
    2> "$out/anchor_moe_layer.log" | tee "$out/anchor_moe_layer.jsonl" || tail -20 "$out/anchor_moe_layer.log"
fi
if has moe_anchor; then  # MoE-small training: torchtitan-style eager and compile, transformers' Qwen2-MoE
  python3 experiments/perf/anchors/moe_small_anchor.py --warmup 3 --steps 10 ${ANCHOR_ARGS:-} \
    2> "$out/anchor_moe_small.log" | tee "$out/anchor_moe_small.jsonl" || tail -20 "$out/anchor_moe_small.log"
fi
if has profile; then  # hardware counters of one layer step's MoE kernels (Nsight Compute), PROFILE_LAYERS or the default
  LAYERS=${PROFILE_LAYERS:-} experiments/perf/profile_layer.sh "$out/profile"
fi
if has attention && [[ -x experiments/perf/run_attention.sh ]]; then
  experiments/perf/run_attention.sh "$out" 2>&1 | tail -20
fi
if has ab && [[ ! -f ${AB_DIR:-.ab}/CMakeLists.txt ]]; then
  echo "run_speed.sh: ab needs a source tree in ${AB_DIR:-.ab} (AB_DIR=.ab/<name> for make_trees.sh's trees)" >&2
elif has ab; then
  LAYERS= experiments/perf/ab_trees.sh "$out" "${AB_DIR:-.ab}"
fi
python3 experiments/perf/summarize_speed.py "$out" || true
