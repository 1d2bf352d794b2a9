#!/usr/bin/env bash
# SIGTERM, SIGINT and SIGHUP during `moe train`: the run finishes its step, saves a checkpoint,
# prints why it stopped and exits 128 + signal; under mpirun every rank stops after the same
# step (a signal to mpirun, or to one rank only); resume = "latest" continues from it.
# Usage: stop_signals.sh MOE_BINARY MPIEXEC
set -euo pipefail
moe=$1
mpiexec=$2
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
long=(--set train.steps=1000000 --set train.eval_every=0 --set train.save_every=0)

# Under mpirun every line starts "[rank R] " (docs/cli.md, "Logging"): rank 0 prints the info lines.
# start NAME LAUNCHER...: a long run into $work/NAME in the background, logging to $work/NAME.log;
# returns once its first step is logged. The launcher's pid is in $pid.
start() {
  local name=$1
  shift
  "$@" "$moe" train "$work/config.toml" "${long[@]}" --set train.run_dir="$work/$name" > "$work/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    grep -qE "^(\[rank 0\] )?step 1/" "$work/$name.log" && return 0
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  echo "$name: no first step logged"; cat "$work/$name.log"; exit 1
}

# finish NAME EXPECTED_CODE SIGNAME: waits, then checks the exit code, the message and that
# the checkpoint it names is committed and loads.
finish() {
  local name=$1 expected=$2 signame=$3 code=0
  wait "$pid" || code=$?
  if [[ $code -ne $expected ]]; then echo "$name: exit $code, expected $expected"; cat "$work/$name.log"; exit 1; fi
  local line
  line=$(grep -E "^(\[rank 0\] )?stopped by $signame after step [0-9]+ of 1000000: checkpoint .*/checkpoints/step_[0-9]+ saved; continue with train.resume = \"latest\"$" "$work/$name.log") ||
    { echo "$name: no stop line"; cat "$work/$name.log"; exit 1; }
  local step
  step=$(sed -E 's/.*after step ([0-9]+) of.*/\1/' <<< "$line")
  test -f "$work/$name/checkpoints/step_$step/model.safetensors"
  grep -q "\"step\": $step" "$work/$name/checkpoints/step_$step/trainer_state.json"
  echo "$name: stopped after step $step (exit $code)"
}

# One process: each signal, its own exit code.
for signal in TERM:143 INT:130 HUP:129; do
  start "single_${signal%:*}"
  kill -"${signal%:*}" "$pid"
  finish "single_${signal%:*}" "${signal#*:}" "SIG${signal%:*}"
done

# A second signal while the first is being handled changes nothing: one checkpoint, committed.
start double
kill -TERM "$pid"
kill -TERM "$pid"
finish double 143 SIGTERM
test "$(ls "$work/double/checkpoints" | wc -l)" -eq 1

# Two ranks, the signal to one rank only: the ranks agree (an all-reduce of the flag) and both
# stop after the same step; mpirun passes on the rank's exit code.
start mpi_one_rank "$mpiexec" --oversubscribe -np 2
rank=$(pgrep -P "$pid" | tail -1)
kill -TERM "$rank"
finish mpi_one_rank 143 SIGTERM

# Two ranks, the signal to mpirun: it sends SIGTERM to every rank (then SIGKILL after
# odls_base_sigkill_timeout, 1 s: time enough for this model) and exits 1 itself. It stops
# draining the ranks' output at once, so rank 0 logs rarely here: a line per step would fill the
# pipe and block rank 0 in the write until the SIGKILL (docs/decisions.md).
long+=(--set train.log_every=100000)
start mpi_launcher "$mpiexec" --oversubscribe -np 2
kill -INT "$pid"
finish mpi_launcher 1 SIGTERM

# resume = "latest" continues from the stop: the next step logged is the one after it. Two ranks
# again, as stopped: one rank would halve the global batch, which a resume refuses (run_dir.cpp).
stopped=$(ls "$work/mpi_one_rank/checkpoints" | sed 's/step_//')
next=$((stopped + 1))
"$mpiexec" --oversubscribe -np 2 "$moe" train "$work/config.toml" --set train.steps=$((stopped + 2)) \
  --set train.eval_every=0 --set train.save_every=0 --set train.run_dir="$work/mpi_one_rank" --set train.resume=latest \
  > "$work/resume.log" 2>&1 || { cat "$work/resume.log"; exit 1; }
grep -q "^\[rank 0\] loaded checkpoint .*/step_$stopped (step $stopped)" "$work/resume.log"
grep -q "^\[rank 0\] step $next/$((stopped + 2)) " "$work/resume.log" || { cat "$work/resume.log"; exit 1; }
grep -q "^\[rank 0\] saved checkpoint .*/step_$((stopped + 2))" "$work/resume.log"
echo "ok"
