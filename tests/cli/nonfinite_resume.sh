#!/usr/bin/env bash
# The NaN/Inf policy and resume sanity through the CLI: a huge learning rate stops at the step
# that diverged (exit 1, no checkpoint of it), a finite loss spike is caught by the guard (stop,
# or skip_step up to train.max_skipped_steps), a checkpoint at or past train.steps is refused,
# and so is a trainer_state.json of `{}`.
# Usage: nonfinite_resume.sh MOE_BINARY
set -euo pipefail
moe=$1
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
"$moe" train "$work/config.toml" > /dev/null  # 4 steps into $work/run, checkpoints step_2 and step_4
quiet=(--set 'data.val_path=""' --set train.eval_every=0 --set schedule.warmup_steps=0)
expect() { EXPECT_ANY_LINES=1 "$here/expect_error.sh" "$@" > /dev/null || { "$here/expect_error.sh" "$@"; exit 1; }; }

# optim.lr = 1e30 on a dense model: step 1's update diverges, step 2 stops; step_1 is the last save.
expect "loss is -?(nan|inf) at step 2 \(rank 0\): training diverged" "$moe" train "$work/config.toml" "${quiet[@]}" \
  --set optim.lr=1e30 --set moe.num_experts=0 --set train.steps=4 --set train.save_every=1 --set train.run_dir="$work/huge"
test -d "$work/huge/checkpoints/step_1"
test ! -e "$work/huge/checkpoints/step_2"

# optim.lr = 1e4: step 2's loss is ~1e9, finite, caught by the default spike guard (factor 100).
spike="loss is [0-9.e+]+ \(above train.loss_spike_factor = 100 x the mean [0-9.]+ of the last 1 steps\) at step 2"
expect "$spike \(rank 0\): training diverged" "$moe" train "$work/config.toml" "${quiet[@]}" --set optim.lr=1e4 \
  --set train.steps=4 --set train.run_dir="$work/spike"
# The same under skip_step: steps 2 and 3 are skipped (the weights stay), then the run stops.
out=$("$moe" train "$work/config.toml" "${quiet[@]}" --set optim.lr=1e4 --set train.steps=6 --set train.save_every=1 \
  --set train.nonfinite=skip_step --set train.max_skipped_steps=2 --set train.run_dir="$work/skip" 2>&1) && exit 1
grep -qE "^skipped the update of step 2: loss is [0-9.e+]+ \(above train.loss_spike_factor" <<< "$out"
grep -q "2 consecutive steps skipped (the last at step 3, train.max_skipped_steps = 2)" <<< "$out"
grep -q '"skipped_steps":1' "$work/skip/metrics.jsonl"
test -d "$work/skip/checkpoints/step_2"  # a skipped step's (unchanged, finite) weights are saved
# With the guard off the spike is trained on (the issue's "a finite loss of 1.2e13 is accepted").
"$moe" train "$work/config.toml" "${quiet[@]}" --set optim.lr=1e4 --set train.steps=2 --set train.loss_spike_factor=0 \
  --set train.run_dir="$work/unguarded" > /dev/null

# Resuming the step-4 checkpoint with train.steps = 3 (or 4): nothing to train (run_dir.cpp, check_resume).
for steps in 3 4; do
  "$here/expect_error.sh" \
    "cannot resume from .*/run/checkpoints/step_4: it is at step 4 and train.steps = $steps, so nothing is left to train" \
    "$moe" train "$work/config.toml" --set train.steps=$steps --set train.resume=latest > /dev/null
done
# A trainer_state.json of {} no longer restarts at step 0 over the run's checkpoints. The edit is
# deliberate, so the checkpoint's checksums.json goes too (the documented way to load a hand-edited
# file; with it, the checksum would refuse the file before its fields are read).
cp -r "$work/run/checkpoints/step_4" "$work/empty_state"
echo '{}' > "$work/empty_state/trainer_state.json"
rm "$work/empty_state/checksums.json"
out=$(EXPECT_ANY_LINES=1 "$here/expect_error.sh" "corrupt checkpoint .*/empty_state/trainer_state.json: field \"step\" is missing" \
  "$moe" train "$work/config.toml" --set train.steps=8 --set train.resume="$work/empty_state") || { echo "$out"; exit 1; }
# Besides the error line, exactly one: the warning that a checkpoint without checksums.json is not verified.
test "$(grep -c . <<< "$out")" -eq 2 || { echo "$out"; exit 1; }
grep -q "warning: checkpoint .*/empty_state has no checksums.json" <<< "$out"
echo "ok"
