#!/usr/bin/env bash
# Trains one objective's quickstart (experiments/objectives/<objective>.toml) on the Brown corpus
# with a tokenizer that reserves the special tokens, then evaluates it. Extra arguments go to
# `moe train` (e.g. --set train.steps=50). Usage: experiments/objectives/run.sh masked_lm [ARGS]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
objective=${1:?usage: run.sh OBJECTIVE [moe train arguments]}
shift
moe=${MOE:-build/moe}
config=experiments/objectives/$objective.toml
[[ -f $config ]] || { echo "no $config" >&2; exit 2; }

if [[ ! -s data/brown-special/train.tok ]]; then
  scripts/fetch_brown.sh .cache/brown
  $moe tokenize --input .cache/brown/brown.txt --out data/brown-special --vocab-size 4096 --special-tokens
fi
$moe train "$config" --set train.overwrite=true "$@"
$moe eval "$config" --checkpoint latest "$@"
