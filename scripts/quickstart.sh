#!/usr/bin/env bash
# The main job: fetch the Brown corpus, train a SentencePiece tokenizer and token shards, train
# the quickstart MoE model (experiments/quickstart/config.toml), evaluate it, and print a sample.
# Runs on the GPU when one is present, else on the CPU. Extra arguments go to `moe train`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
moe=build/moe
config=experiments/quickstart/config.toml

scripts/fetch_brown.sh .cache/brown
if [[ ! -s data/brown/train.tok ]]; then
  $moe tokenize --input .cache/brown/brown.txt --out data/brown --vocab-size 4096
fi
rm -rf runs/quickstart
$moe train "$config" "$@"
$moe eval "$config" --checkpoint latest
$moe generate --checkpoint "$(ls -d runs/quickstart/checkpoints/step_* | sort -V | tail -1)" \
  --prompt "The jury said" --max-new-tokens 40 --temperature 0.8 --top-p 0.95
