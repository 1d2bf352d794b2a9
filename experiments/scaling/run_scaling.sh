#!/usr/bin/env bash
# Scaling runs on one multi-GPU host (issues 6 and 7): speed of each layout against one GPU at the
# same per-GPU batch, the all-to-all bandwidth, and 50-step losses against a one-GPU run with the
# same global batch. Run from the repo root after experiments/perf/run_h200.sh built build/moe.
# Usage: experiments/scaling/run_scaling.sh OUT_DIR GPUS   (GPUS = 4 or 8)
# Environment (defaults for the H200 hosts; the CPU trial in README.md overrides them):
#   MOE=build/moe  CONFIGS="moe_small.toml-path ..."  LOSS_CONFIG=...  LOSS_DATA=data/brown/train.tok
#   BENCH_STEPS="--warmup 2 --steps 5"  LOSS_STEPS=50  ACCUM=4 (micro-batches per step per replica)
#   CMD_TIMEOUT=240 (seconds per launch)  ONLY=REGEX (run only the benches whose name matches,
#   e.g. ONLY='1gpu|ep_8' to split one config's benches over two device calls)
#   PARTS="bench dispatch loss" (a device call is at most 10 minutes: split the parts and configs
#   over calls, e.g. PARTS=bench CONFIGS=experiments/perf/moe_small.toml, then PARTS="dispatch loss")
set -uo pipefail
out=${1:?out dir}
gpus=${2:?gpus (4 or 8)}
moe=${MOE:-build/moe}
if (( gpus == 8 )); then
  configs=${CONFIGS:-experiments/perf/moe_small.toml experiments/scaling/moe_5b.toml}
  # EP 8 (DP 8) with ZeRO-1 and ZeRO-3; PP 2 x TP 2 x DP 2 with EP 2; TP 2 x DP 4 with EP 4.
  layouts=("ep=8 zero=1" "ep=8 zero=3" "pp=2 tp=2 ep=2 zero=1" "tp=2 ep=4 zero=1")
  weak=(2 4 8)  # EP = DP = N on N GPUs: the weak-scaling series
else
  configs=${CONFIGS:-experiments/perf/moe_small.toml experiments/scaling/moe_1b.toml}
  # EP 4 (DP 4), EP 2 x DP 2, TP 2 x DP 2 with EP 2, PP 2 x DP 2 with EP 2; each with ZeRO-1.
  layouts=("ep=4 zero=1" "ep=2 zero=1" "tp=2 ep=2 zero=1" "pp=2 ep=2 zero=1")
  weak=(2 4)
fi
accum=${ACCUM:-4}
read -ra steps <<< "${BENCH_STEPS:---warmup 2 --steps 5}"
mkdir -p "$out"
# A hung collective must not eat the device call: every launch has a time limit (CMD_TIMEOUT s).
mpi=(timeout "${CMD_TIMEOUT:-240}" mpirun --oversubscribe -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
     -x NVSHMEM_DISABLE_NVLS)

# "tp=2 ep=2 zero=1" -> --set parallel.tp=2 ...; prints the TP x PP product on stdout's last word.
layout_sets() {
  local kv model_ranks=1
  sets=()
  for kv in $1; do
    sets+=(--set "parallel.$kv")
    [[ $kv == tp=* || $kv == pp=* ]] && model_ranks=$(( model_ranks * ${kv#*=} ))
  done
  model=$model_ranks
}

bench() {  # bench NAME NP CONFIG [--set ...]: one JSON line into $out/bench_NAME.json
  local name=$1 np=$2 cfg=$3; shift 3
  [[ -z ${ONLY:-} || $name =~ $ONLY ]] || return 0
  echo "[$(date +%T)] bench $name" >> "$out/timeline.txt"
  "${mpi[@]}" -np "$np" "$moe" bench train "$cfg" "$@" "${steps[@]}" 2>&1 | tail -1 | tee "$out/bench_$name.json"
}

parts=${PARTS:-bench dispatch loss}
has_part() { [[ " $parts " == *" $1 "* ]]; }

has_part bench && for cfg in $configs; do
  c=$(basename "$cfg" .toml)
  # Every GPU runs micro_batch_size x accum sequences per step: a TP or PP group shares its
  # replica's micro-batches, so its replica runs accum x tp x pp of them.
  bench "${c}_1gpu" 1 "$cfg" --set train.grad_accum="$accum"
  for n in "${weak[@]}"; do
    (( n == gpus )) && continue  # the "ep=GPUS zero=1" layout below
    bench "${c}_${n}gpu_ep$n" "$n" "$cfg" --set train.grad_accum="$accum" --set parallel.ep="$n" --set parallel.zero=1
  done
  for layout in "${layouts[@]}"; do
    layout_sets "$layout"
    bench "${c}_${gpus}gpu_$(echo "$layout" | tr ' =' '__')" "$gpus" "$cfg" \
      --set train.grad_accum=$(( accum * model )) "${sets[@]}"
  done
done
has_part dispatch && for cfg in $configs; do
  c=$(basename "$cfg" .toml)
  for ep in "${weak[@]}"; do
    "${mpi[@]}" -np "$ep" "$moe" bench dispatch "$cfg" --set parallel.ep="$ep" 2>&1 | tail -1 \
      | tee "$out/bench_dispatch_${c}_ep$ep.json"
  done
done

has_part loss || exit 0
# Losses: 16 sequences of micro-batch 2 per step in every layout and in the one-GPU reference.
# Run directories (with their final checkpoints) stay out of OUT_DIR, which travels back.
runs=${RUNS:-runs/scaling_$gpus}
rm -rf "$runs"
loss_cfg=${LOSS_CONFIG:-experiments/perf/moe_small.toml}
common=(--set train.steps="${LOSS_STEPS:-50}" --set train.log_every=1 --set train.eval_every=0
        --set train.save_every=0 --set train.micro_batch_size=2 --set data.train_path="${LOSS_DATA:-data/brown/train.tok}")
"${mpi[@]}" -np 1 "$moe" train "$loss_cfg" "${common[@]}" --set train.grad_accum=8 --set train.run_dir="$runs/ref" \
  > "$out/loss_ref.log" 2>&1 || tail -5 "$out/loss_ref.log"
: > "$out/losses.txt"
# The bf16 noise floor: the same 16 sequences on one GPU as 4 micro-batches of 4 (only the order of
# the bf16 sums differs from the reference).
"${mpi[@]}" -np 1 "$moe" train "$loss_cfg" "${common[@]}" --set train.micro_batch_size=4 --set train.grad_accum=4 \
  --set train.run_dir="$runs/ref_mb4" > "$out/loss_ref_mb4.log" 2>&1 || tail -5 "$out/loss_ref_mb4.log"
echo "== one GPU, micro-batch 4 (control): $(python3 experiments/perf/compare_losses.py "$runs/ref/metrics.jsonl" \
  "$runs/ref_mb4/metrics.jsonl" | tail -1)" | tee -a "$out/losses.txt"
for layout in "${layouts[@]}"; do
  layout_sets "$layout"
  name=$(echo "$layout" | tr ' =' '__')
  replicas=$(( gpus / model ))
  "${mpi[@]}" -np "$gpus" "$moe" train "$loss_cfg" "${common[@]}" "${sets[@]}" \
    --set train.grad_accum=$(( 8 / replicas )) --set train.run_dir="$runs/$name" > "$out/loss_$name.log" 2>&1 \
    || tail -5 "$out/loss_$name.log"
  echo "== $layout: $(python3 experiments/perf/compare_losses.py "$runs/ref/metrics.jsonl" \
    "$runs/$name/metrics.jsonl" | tail -1)" | tee -a "$out/losses.txt"
done
