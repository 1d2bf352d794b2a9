#!/usr/bin/env bash
# Run directories through the CLI: a fresh run over an old one is refused (or cleared with
# train.overwrite), a second run on a locked directory fails naming the holder's pid, a killed
# run's lock does not block, resume cuts metrics back to the checkpoint (no duplicate steps),
# refuses config changes to the model or data order and checkpoints at or past train.steps,
# eval refuses a checkpoint of another layer count, keep_last prunes, staging is cleaned.
# Usage: run_dir.sh MOE_BINARY
set -euo pipefail
moe=$1
here=$(dirname "$0")
work=$(mktemp -d)
bg=""
trap '[[ -n $bg ]] && kill -9 "$bg" 2> /dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
cfg=$work/config.toml
run=$work/run
"$moe" train "$cfg" > /dev/null
# Duplicate train records (a step logged twice) in metrics.jsonl, one step number per line.
duplicate_steps() { grep -v val_loss "$run/metrics.jsonl" | grep -o '"step":[0-9]*' | sort | uniq -d; }

# 1. A fresh run into a directory holding a run is refused, saying how to resume or overwrite.
"$here/expect_error.sh" "train.run_dir = $run already holds a run \(checkpoints up to step_4 and metrics.jsonl\): \
resume it with train.resume=latest, or set train.overwrite=true" "$moe" train "$cfg"

# 2. Resuming at or past train.steps is refused (it used to exit 0 having done nothing).
"$here/expect_error.sh" "cannot resume from $run/checkpoints/step_4: it is at step 4 and train.steps = 3" \
  "$moe" train "$cfg" --set train.resume=latest --set train.steps=3

# 3. Config changes that alter the model or the data order are refused, all listed in one line.
"$here/expect_error.sh" "cannot resume from .*step_4: the config changes the model or the data order: \
model.num_layers 2 -> 1, moe.router \"softmax_topk\" -> \"topk_softmax\", train.seed 1234 -> 7; keep them as in" \
  "$moe" train "$cfg" --set train.resume=latest --set train.steps=6 --set model.num_layers=1 \
  --set moe.router=topk_softmax --set train.seed=7
"$here/expect_error.sh" "the global batch \(sequences per step: .*\) 4 -> 8" \
  "$moe" train "$cfg" --set train.resume=latest --set train.steps=6 --set train.grad_accum=2
# The loader refuses a checkpoint whose tensors are not the model's (here: one layer fewer).
"$here/expect_error.sh" "checkpoint $run/checkpoints/step_4 does not match the model: .* tensor\(s\) the model \
does not have \('layers.1" "$moe" eval "$cfg" --set model.num_layers=1 --checkpoint latest

# 4. A long run holds the lock: a second run fails at once naming the directory and the pid.
"$moe" train "$cfg" --set train.resume=latest --set train.steps=1000000 --set train.save_every=40 \
  --set train.keep_last=2 --set train.eval_every=0 > "$work/long.log" 2>&1 &
bg=$!
for _ in $(seq 600); do
  [[ $(grep -c '"loss"' "$run/metrics.jsonl") -gt 150 ]] && break
  sleep 0.1
done
[[ $(grep -c '"loss"' "$run/metrics.jsonl") -gt 150 ]] || { cat "$work/long.log"; fail "the long run did not start"; }
"$here/expect_error.sh" "run directory $run is in use by another run \(pid $bg holds $run/.lock\)" \
  "$moe" train "$cfg" --set train.resume=latest --set train.steps=1000
# 5. Killed (the lock goes with the process), it leaves metrics past its last checkpoint.
kill -9 "$bg"
wait "$bg" 2> /dev/null || true
bg=""
grep -q "removed checkpoint $run/checkpoints/step_4 (train.keep_last = 2)" "$work/long.log" || fail "step_4 not pruned"
mapfile -t kept < <(ls "$run/checkpoints" | grep -E '^step_[0-9]+$' | sort -V)
# keep_last = 2 prunes after each save's commit: a kill between the two leaves one checkpoint more
# (the next save prunes it), so 2 or 3 remain, the newest last.
(( ${#kept[@]} == 2 || ${#kept[@]} == 3 )) || fail "keep_last = 2 left ${kept[*]}"
latest=${kept[-1]#step_}
mkdir "$run/checkpoints/step_99999.tmp-4242"  # a save killed before its commit
echo "{\"step\": $((latest + 30)), \"loss\": 1.0" >> "$run/metrics.jsonl"  # a torn last line
"$moe" train "$cfg" --set train.resume=latest --set train.steps=$((latest + 2)) --set train.log_every=1 \
  > "$work/resume.log"
grep -q "removed $run/checkpoints/step_99999.tmp-4242 (left by a killed save)" "$work/resume.log" \
  || fail "staging not cleaned"
[[ ! -e $run/checkpoints/step_99999.tmp-4242 ]] || fail "staging left"
grep -q "metrics.jsonl: dropped [0-9]* records after step $latest" "$work/resume.log" || fail "metrics not cut back"
grep -q "resume: config changes from $run/checkpoints/step_$latest/config.toml: train.steps 1000000 -> \
$((latest + 2)), train.eval_every 0 -> 2, train.save_every 40 -> 2, train.keep_last 2 -> 0" "$work/resume.log" \
  || { cat "$work/resume.log"; fail "no diff of the allowed changes"; }
grep "resume: config changes" "$work/resume.log" | grep -q log_every && fail "an unchanged key was listed"
[[ -z $(duplicate_steps) ]] || fail "duplicate steps in metrics.jsonl: $(duplicate_steps)"
grep -q "\"step\":$((latest + 2))" "$run/metrics.jsonl" || fail "the resumed steps were not logged"

# 6. train.overwrite = true clears the old checkpoints and metrics first.
"$moe" train "$cfg" --set train.overwrite=true > "$work/overwrite.log"
grep -q "train.overwrite: removed checkpoints up to step_$((latest + 2)) and metrics.jsonl from $run" \
  "$work/overwrite.log" || fail "overwrite did not say what it removed"
[[ $(ls "$run/checkpoints") == $'step_2\nstep_4' ]] || fail "old checkpoints left: $(ls "$run/checkpoints")"
[[ $(grep -c '"loss"' "$run/metrics.jsonl") -eq 4 ]] || fail "old metrics left"
echo "run_dir ok"
