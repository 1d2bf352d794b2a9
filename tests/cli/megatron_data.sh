#!/usr/bin/env bash
# Megatron data end to end: `moe tokenize --format megatron` over a glob of JSONL files, then
# `moe train` reading the .bin/.idx pairs by prefix (train) and by .idx name (val); a vocabulary
# too small for the data and an empty split refused naming the .bin. Usage: megatron_data.sh MOE_BINARY
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$(dirname "$0")/tiny_run.sh" "$moe" "$work"  # WORK/config.toml and the text corpus
mkdir -p "$work/in"
# The corpus as JSONL, one record per paragraph, alternating between two files.
awk -v RS= -v dir="$work/in" '{
  gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\n/, "\\n")
  printf "{\"id\": %d, \"text\": \"%s\"}\n", NR, $0 > (dir "/" (NR % 2 ? "a" : "b") ".jsonl")
}' "$work/corpus.txt"
"$moe" tokenize --input "$work/in/*.jsonl" --out "$work/mdata" --vocab-size 300 --format megatron --threads 2 \
  | tee "$work/tokenize.log"
grep -q "tokenize: 2 inputs: 100 documents (JSONL field 'text')" "$work/tokenize.log"
grep -q "(trained, uint16) -> $work/mdata (megatron, 1 + 1 shards)" "$work/tokenize.log"
for f in train.bin train.idx val.bin val.idx manifest.json tokenizer.model; do test -s "$work/mdata/$f"; done
"$moe" train "$work/config.toml" --set data.train_path="$work/mdata/train" --set data.val_path="$work/mdata/val.idx" \
  --set train.run_dir="$work/mrun" --set train.steps=2 | tee "$work/train.log"
grep -q '"val_loss"' "$work/mrun/metrics.jsonl"
if "$moe" train "$work/config.toml" --set data.train_path="$work/mdata/train.bin" --set model.vocab_size=100 \
    --set train.run_dir="$work/bad" > "$work/bad.log" 2>&1; then
  echo "a vocabulary smaller than the data's ids was accepted"; cat "$work/bad.log"; exit 1
fi
grep -q "data.train_path $work/mdata/train.bin: token id [0-9]* at position [0-9]* is outside the vocabulary (model.vocab_size = 100)" \
  "$work/bad.log" || { cat "$work/bad.log"; exit 1; }
# An empty split (no validation documents) is refused by name when a run would evaluate on it.
"$moe" tokenize --input "$work/in/a.jsonl" --out "$work/noval" --tokenizer "$work/mdata/tokenizer.model" \
  --format megatron --val-fraction 0 > /dev/null
if "$moe" train "$work/config.toml" --set data.train_path="$work/noval/train" --set data.val_path="$work/noval/val" \
    --set train.run_dir="$work/bad" > "$work/empty.log" 2>&1; then
  echo "an empty validation split was accepted"; cat "$work/empty.log"; exit 1
fi
grep -q "data.val_path $work/noval/val.bin: has 0 tokens, fewer than seq_len + 1 = 17" "$work/empty.log" \
  || { cat "$work/empty.log"; exit 1; }
echo "megatron data ok"
