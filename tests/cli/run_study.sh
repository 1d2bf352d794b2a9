#!/usr/bin/env bash
# experiments/run_study.sh on a tiny generated corpus: both ablation studies (hash_layers,
# deepseekmoe) run every variant of their variants.txt (a 2-step model), build the hash tables
# from the data and from the dense run's checkpoint, and tabulate one row per run; the upcycling
# study continues each seed's dense run (upcycled and dense); a broken variant fails the study
# naming the run. Usage: run_study.sh MOE_BINARY SOURCE_DIR
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$(dirname "$0")/tiny_corpus.sh" "$work/corpus.txt" 600
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data" --vocab-size 300 > /dev/null
export MOE=$moe
export EXTRA="--set model.vocab_size=320 --set model.d_model=32 --set model.num_heads=2 --set model.num_kv_heads=2
  --set model.seq_len=16 --set model.d_ff=64 --set train.micro_batch_size=4 --set train.steps=2 --set train.eval_every=2
  --set train.save_every=2 --set train.eval_batches=1 --set train.device=cpu --set data.train_path=$work/data/train.tok
  --set data.val_path=$work/data/val.tok --set data.tokenizer=$work/data/tokenizer.model"
for study in hash_layers deepseekmoe; do
  "$src/experiments/run_study.sh" "$src/experiments/$study" "$work/$study" > "$work/$study.out" 2>&1 \
    || { cat "$work/$study.out"; exit 1; }
  runs=$(grep -c "^run " "$src/experiments/$study/variants.txt")
  rows=$(grep -cE '^[a-z0-9_]+,[0-9]+,[0-9]+,128,[0-9.]+,[0-9.]+,$' "$work/$study/results.csv")  # 2 steps x 4 x 16 tokens; no seed
  [[ $rows -eq $runs ]] || { echo "$study: $rows result rows for $runs runs"; cat "$work/$study/results.csv"; exit 1; }
  [[ $(grep -c '^| ' "$work/$study/results.md") -eq $((runs + 1)) ]] || { echo "$study: bad table"; exit 1; }
  [[ $(grep -c '^| ' "$work/$study/summary.md") -eq $((runs + 1)) ]] || { echo "$study: bad summary"; exit 1; }
done
for table in balanced clustering dispersed; do
  [[ -s $work/hash_layers/work/tables/$table.safetensors ]] || { echo "no $table table"; exit 1; }
done
# The hash layer holds 16 experts of 512 (x3 matrices) on top of the dense model's parameters.
dense=$(awk -F, '$1 == "dense" {print $2}' "$work/hash_layers/results.csv")
hashed=$(awk -F, '$1 == "hash_random" {print $2}' "$work/hash_layers/results.csv")
[[ $((hashed - dense)) -eq $((16 * 3 * 32 * 512 - 3 * 32 * 64)) ]] || { echo "hash_random has $hashed parameters, dense $dense"; exit 1; }

# The upcycling study at toy size (2 steps each, experts of the toy FFN's width), over two seeds:
# each continuation starts from its own seed's dense run (upcycled, or its weights).
mkdir -p "$work/upcycling_study"
cp "$src/experiments/upcycling/base.toml" "$work/upcycling_study/"
sed -E 's/(train\.steps|train\.save_every|data\.skip_batches)=[0-9]+/\1=2/g' "$src/experiments/upcycling/variants.txt" \
  > "$work/upcycling_study/variants.txt"
EXTRA="$EXTRA --set moe.d_expert=64" "$src/experiments/run_study.sh" --seeds 1,2 "$work/upcycling_study" \
  "$work/upcycling" > "$work/upcycling.out" 2>&1 || { cat "$work/upcycling.out"; exit 1; }
for run in dense_continued upcycled_copy upcycled_fine moe_scratch; do
  [[ $(grep -c "^$run," "$work/upcycling/results.csv") -eq 2 ]] || { echo "upcycling: no 2 rows of $run"; cat "$work/upcycling/results.csv"; exit 1; }
done
for seed in 1 2; do
  grep -q "upcycle upcycled_copy/seed_$seed from $work/upcycling/work/runs/dense_base/seed_$seed/checkpoints/step_2 (copy)" \
    "$work/upcycling.out" || { echo "upcycling: seed $seed not upcycled from its own dense run"; cat "$work/upcycling.out"; exit 1; }
  grep -q "run dense_continued/seed_$seed from the weights of $work/upcycling/work/runs/dense_base/seed_$seed/checkpoints/step_2" \
    "$work/upcycling.out" || { echo "upcycling: dense_continued seed $seed"; cat "$work/upcycling.out"; exit 1; }
done
# The fine-grained upcycle cut each layer's FFN into 4 segments: 32 experts of 16 units.
grep -q "layer 1: 32 experts of width 16 from d_ff 64, G = 4 segments" "$work/upcycling/work/logs/upcycle_upcycled_fine.seed_1.log" \
  || { echo "upcycling: the fine-grained model is not 32 experts of 16"; exit 1; }

# A variant the trainer rejects fails the study with its name; an unknown step is refused.
mkdir -p "$work/broken"
cp "$src/experiments/hash_layers/base.toml" "$work/broken/"
printf 'run dense moe.num_experts=0\nrun too_many moe.top_k=99\n' > "$work/broken/variants.txt"
if "$src/experiments/run_study.sh" "$work/broken" "$work/broken_out" > "$work/broken.out" 2>&1; then
  echo "a study with a broken variant succeeded"; exit 1
fi
grep -q "run too_many failed: .*top_k" "$work/broken.out" || { echo "no error naming the run:"; cat "$work/broken.out"; exit 1; }
# An unknown step anywhere is refused before the first run trains.
printf 'run dense moe.num_experts=0\ntrain dense\n' > "$work/broken/variants.txt"
if "$src/experiments/run_study.sh" "$work/broken" "$work/unknown_out" > "$work/broken.out" 2>&1; then
  echo "an unknown step was accepted"; exit 1
fi
grep -q "variants.txt:2: unknown step 'train'" "$work/broken.out" || { cat "$work/broken.out"; exit 1; }
[[ ! -e $work/unknown_out/work/runs/dense ]] || { echo "a run trained before the unknown step was refused"; exit 1; }
# A last line without a newline is a step too.
printf 'run dense moe.num_experts=0' > "$work/broken/variants.txt"
"$src/experiments/run_study.sh" "$work/broken" "$work/last_line_out" > "$work/broken.out" 2>&1 \
  || { cat "$work/broken.out"; exit 1; }
[[ $(grep -c '^dense,' "$work/last_line_out/results.csv") -eq 1 ]] || { echo "the last line did not run"; exit 1; }
echo "run_study: the studies ran every variant"
