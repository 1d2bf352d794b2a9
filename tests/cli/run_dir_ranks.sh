#!/usr/bin/env bash
# Run directories under mpirun on one host: rank 0 alone locks, so two ranks train into one
# directory; a fresh run over it is refused on every rank; a resume on another number of ranks
# is refused when that changes the global batch, and allowed on the same number.
# Usage: run_dir_ranks.sh MPIEXEC MOE_BINARY
set -euo pipefail
mpiexec=$1
moe=$2
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
cfg=$work/config.toml
two=("$mpiexec" --oversubscribe -np 2 "$moe")
"${two[@]}" train "$cfg" > "$work/first.log" 2>&1 || { cat "$work/first.log"; exit 1; }
test -s "$work/run/checkpoints/step_4/model.safetensors"
EXPECT_ANY_LINES=1 "$here/expect_error.sh" "train.run_dir = $work/run already holds a run" "${two[@]}" train "$cfg"
# Saved by 2 data-parallel ranks of micro-batch 4: 8 sequences per step; one rank reads 4.
"$here/expect_error.sh" "the global batch \(sequences per step: .*\) 8 -> 4" \
  "$moe" train "$cfg" --set train.resume=latest --set train.steps=6
"${two[@]}" train "$cfg" --set train.resume=latest --set train.steps=6 > "$work/resume.log" 2>&1 \
  || { cat "$work/resume.log"; exit 1; }
grep -q "step 6/6" "$work/resume.log"
echo "run_dir_ranks ok"
