#!/usr/bin/env bash
# Logging (docs/cli.md, "Logging"): --quiet keeps warnings and errors only, --verbose adds debug
# lines, the run directory's train.log holds every printed line (and the debug ones) with
# timestamps, eval's human text stays off stdout, and under mpirun warnings come from every rank
# with a "[rank R] " prefix while rank 0 alone prints the info lines.
# Usage: logging.sh MOE_BINARY MPIEXEC
set -euo pipefail
moe=$1
mpiexec=$2
here=$(dirname "$0")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$here/tiny_run.sh" "$moe" "$work" > /dev/null
cfg=$work/config.toml
stamp='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{3}Z'

# train.log: the progress lines, timestamped, and the debug lines the terminal did not show.
"$moe" train "$cfg" --set train.run_dir="$work/plain" > "$work/plain.out" 2> "$work/plain.err" \
  || { cat "$work/plain.out" "$work/plain.err"; fail "train"; }
log=$work/plain/train.log
test -s "$log" || fail "no train.log in the run directory"
grep -qE "$stamp \[info\] step 4/4 \| loss " "$log" || { cat "$log"; fail "train.log lacks the progress line"; }
grep -qE "$stamp \[info\] saved checkpoint .*step_4 \([0-9.]+ [KMG]?i?B in [0-9.]+ s\)$" "$log" \
  || { cat "$log"; fail "train.log lacks the checkpoint line (bytes, seconds)"; }
grep -qE "$stamp \[debug\] model: initialising [0-9]+ parameters" "$log" || { cat "$log"; fail "no debug lines in train.log"; }
if grep -q "debug" "$work/plain.out" "$work/plain.err"; then fail "debug lines on the terminal without --verbose"; fi
while IFS= read -r line; do
  grep -qF -- "] $line" "$log" || fail "printed but not in train.log: $line"
done < "$work/plain.out"
# A resume appends to train.log.
"$moe" train "$cfg" --set train.run_dir="$work/plain" --set train.resume=latest --set train.steps=5 > /dev/null
grep -q "step 4/4" "$log" && grep -q "step 5/5" "$log" || fail "the resume did not append to train.log"

# --quiet: nothing on stdout, nothing on stderr for a clean run; train.log still complete.
"$moe" train "$cfg" --quiet --set train.run_dir="$work/quiet" > "$work/quiet.out" 2> "$work/quiet.err"
test ! -s "$work/quiet.out" || { cat "$work/quiet.out"; fail "--quiet printed info lines"; }
test ! -s "$work/quiet.err" || { cat "$work/quiet.err"; fail "--quiet printed on stderr"; }
grep -q "step 4/4" "$work/quiet/train.log" || fail "--quiet: train.log lacks the progress lines"
# ... but warnings and errors still show (exit 1 with the one error line).
cp -r "$work/plain/checkpoints/step_4" "$work/nock"
rm "$work/nock/checksums.json"
"$moe" eval -q --checkpoint "$work/nock" > "$work/nock.json" 2> "$work/nock.err"
jq -e .val_loss "$work/nock.json" > /dev/null || fail "eval -q stdout"
[[ $(cat "$work/nock.err") == "warning: checkpoint $work/nock has no checksums.json (written before checksums): its files are not verified" ]] \
  || { cat "$work/nock.err"; fail "--quiet: the warning alone on stderr"; }
EXPECT_CODE=1 "$here/expect_error.sh" "^\[rank 0\] error: .*no-such-shard.tok" \
  "$moe" train "$cfg" --quiet --set data.train_path=no-such-shard.tok > /dev/null || fail "--quiet hid the error"

# --verbose: debug lines; eval's stdout stays one JSON line (`moe eval ... | jq`).
"$moe" eval --verbose --checkpoint "$work/plain/checkpoints/step_4" 2> "$work/verbose.err" | jq -e '.val_loss > 0' > /dev/null \
  || fail "eval --verbose | jq"
grep -q "^debug: loading checkpoint .*step_4" "$work/verbose.err" || { cat "$work/verbose.err"; fail "--verbose: no debug lines"; }
grep -q "^loaded checkpoint .*step_4 (step 4): " "$work/verbose.err" || fail "eval's info lines are not on stderr"

# Progress of the long operations: tokenize's rates; k-means and upcycle at debug level when quick.
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data2" --vocab-size 300 --progress-seconds 0 > "$work/tok.out"
grep -qE "^tokenize: encode 100.0% \(.* documents, [0-9]+ documents/s, [0-9]+ tokens, [0-9]+ tokens/s\)$" "$work/tok.out" \
  || { cat "$work/tok.out"; fail "tokenize progress line"; }
"$moe" hash-table --kind clustering --experts 4 --checkpoint "$work/plain/checkpoints/step_4" --out "$work/t.safetensors" \
  --verbose > "$work/kmeans.out"
grep -qE "^debug: k-means: iteration [0-9]+/[0-9]+, inertia [0-9.e+-]+ " "$work/kmeans.out" \
  || { cat "$work/kmeans.out"; fail "k-means progress"; }
grep -q "^hash-table: clustering" "$work/kmeans.out" || fail "hash-table summary line"
"$moe" train "$cfg" --quiet --set moe.num_experts=0 --set train.run_dir="$work/dense"
"$moe" upcycle "$cfg" --from "$work/dense" --out "$work/up" --set moe.d_expert=64 -v > "$work/up.out"
grep -qE "^debug: upcycle: model initialised in [0-9.]+ s" "$work/up.out" || { cat "$work/up.out"; fail "upcycle debug lines"; }
grep -q "^resume with: moe train " "$work/up.out" || fail "upcycle's resume line"
# Off a terminal (these outputs are files) progress is plain lines: no carriage return.
if grep -q $'\r' "$work/tok.out" "$work/kmeans.out" "$work/up.out"; then fail "a carriage return off a terminal"; fi
# On a terminal (script(1) gives the command a pseudo-terminal) one line is rewritten with '\r'
# and ended before the summary line; --quiet silences it.
if command -v script > /dev/null; then
  tok=("$moe" tokenize --input "$work/corpus.txt" --vocab-size 300)
  script -qec "${tok[*]} --out $work/data3" /dev/null > "$work/tty.out"
  grep -q $'\rtokenize: encode 100.0% (' "$work/tty.out" || { cat -A "$work/tty.out"; fail "no '\\r' progress line on a terminal"; }
  grep -qE "^tokenize: .*: [0-9]+ documents" "$work/tty.out" || { cat -A "$work/tty.out"; fail "summary not on its own line after the progress line"; }
  script -qec "${tok[*]} --out $work/data4 --quiet" /dev/null > "$work/ttyq.out"
  if grep -q "tokenize" "$work/ttyq.out"; then cat -A "$work/ttyq.out"; fail "progress under --quiet"; fi
fi

# Two ranks: the warning from each rank, prefixed; info lines from rank 0 alone.
two=("$mpiexec" --oversubscribe -np 2 "$moe")
"${two[@]}" eval --checkpoint "$work/nock" > "$work/two.json" 2> "$work/two.err" || { cat "$work/two.err"; fail "2-rank eval"; }
for rank in 0 1; do
  grep -q "^\[rank $rank\] warning: checkpoint $work/nock has no checksums.json" "$work/two.err" \
    || { cat "$work/two.err"; fail "no warning from rank $rank"; }
done
jq -e .val_loss "$work/two.json" > /dev/null || fail "2-rank eval stdout"
"${two[@]}" train "$cfg" --set train.run_dir="$work/two" > "$work/two.out" 2>&1 || { cat "$work/two.out"; fail "2-rank train"; }
grep -q "^\[rank 0\] step 4/4 | loss" "$work/two.out" || { cat "$work/two.out"; fail "no rank-0 progress line"; }
if grep -v "^\[rank 0\] " "$work/two.out" | grep -q .; then cat "$work/two.out"; fail "lines not from rank 0"; fi
"${two[@]}" train "$cfg" --verbose --set train.run_dir="$work/two_verbose" > "$work/twov.out" 2>&1
grep -q "^\[rank 1\] debug: " "$work/twov.out" || { cat "$work/twov.out"; fail "--verbose: no debug lines from rank 1"; }
echo "logging ok"
