#!/usr/bin/env bash
# Diverged weights through the CLI: one step at optim.lr = 1e30 ends with an error, not a
# checkpoint (the final evaluation finds the NaN loss), and eval of diverged weights exits
# non-zero instead of printing a null loss. (A failing checkpoint write is tested in
# tests/train/test_checkpoint_safety.cpp: `ulimit -f` here would also break MPI's start-up.)
# Usage: checkpoint_safety.sh MOE_BINARY
set -euo pipefail
moe=$1
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
# Training prints its steps before the error line.
EXPECT_ANY_LINES=1 "$here/expect_error.sh" "validation loss is -?nan on .*val.tok: the model's weights have diverged" \
  "$moe" train "$work/config.toml" --set optim.lr=1e30 --set train.steps=1 --set train.run_dir="$work/huge-lr"
test ! -e "$work/huge-lr/checkpoints/step_1"

# Diverged weights: saved only where nothing evaluates them (no validation data), refused by eval.
"$moe" train "$work/config.toml" --set optim.lr=1e30 --set train.steps=1 --set 'data.val_path=""' \
  --set train.run_dir="$work/diverged" > /dev/null
# Exactly two lines: the checkpoint's load line (an info line, printed as it happens), then the error.
out=$(EXPECT_ANY_LINES=1 "$here/expect_error.sh" "validation loss is -?nan on .*val.tok: the model's weights have diverged" \
  "$moe" eval "$work/config.toml" --set train.run_dir="$work/diverged") || { echo "$out"; exit 1; }
test "$(grep -c . <<< "$out")" -eq 2 || { echo "$out"; exit 1; }
grep -q "^ok (exit 1): loaded checkpoint .*/diverged/checkpoints/step_1 (step 1)" <<< "$out" || { echo "$out"; exit 1; }
echo "ok"
