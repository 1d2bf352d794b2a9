#!/usr/bin/env bash
# `moe eval --text/--tokens` (docs/cli.md): one loss line per token but the first, their mean equal to
# the one recomputed from `moe logits`, windows past seq_len, --dump-layer's [T, d] hidden states.
# Usage: score_text.sh MOE_BINARY
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$(dirname "$0")/tiny_run.sh" "$moe" "$work"
"$moe" train "$work/config.toml" > /dev/null 2>&1
ckpt="$work/run"
# One window (seq_len = 16): 16 tokens, 15 scored; the mean equals -log softmax from `moe logits`.
echo "5 17, 42,7 100 3 9 250 11 12,13 14 15 16 200 8" > "$work/one.txt"
"$moe" eval --checkpoint "$ckpt" --tokens "$work/one.txt" > "$work/one.jsonl" 2> "$work/one.err"
[[ $(wc -l < "$work/one.jsonl") -eq 16 ]] || fail "15 token lines + the summary expected"
jq -se '.[-1].tokens == 15 and (.[0:15] | map(.pos) == [range(1;16)]) and .[0].token == 17' "$work/one.jsonl" \
  > /dev/null || fail "positions, tokens, count"
"$moe" logits "$ckpt" --tokens 5,17,42,7,100,3,9,250,11,12,13,14,15,16,200,8 > "$work/logits.json"
jq -se --slurpfile l "$work/logits.json" '
  ($l[0].logits) as $L | ($l[0].tokens) as $T |
  ([range(0;15) | . as $t | ($L[$t] | max) as $m | ($m + ($L[$t] | map(. - $m | exp) | add | log)) - $L[$t][$T[$t+1]]]
   | add / 15) as $mean |
  (.[-1].mean_loss - $mean | fabs) < 1e-4 and (.[-1].ppl - (.[-1].mean_loss | exp) | fabs) < 1e-6 and
  ((.[0:15] | map(.loss) | add / 15) - .[-1].mean_loss | fabs) < 1e-9' "$work/one.jsonl" > /dev/null \
  || fail "mean loss differs from moe logits'"
# Two windows (20 ids): the second one's inputs start at position 16, its first target (pos 17) is scored
# from id 16 (30) alone, as `moe logits` of positions 16..19 gives it.
echo "5 17 42 7 100 3 9 250 11 12 13 14 15 16 200 8 30 31 32 33" > "$work/two.txt"
"$moe" eval --checkpoint "$ckpt" --tokens "$work/two.txt" 2> /dev/null > "$work/two.jsonl"
"$moe" logits "$ckpt" --tokens 30,31,32,33 > "$work/logits2.json"
jq -se --slurpfile l "$work/logits2.json" '
  ($l[0].logits[0]) as $r | ($r | max) as $m | (($m + ($r | map(. - $m | exp) | add | log)) - $r[31]) as $loss |
  .[-1].tokens == 19 and .[16].pos == 17 and .[16].token == 31 and (.[16].loss - $loss | fabs) < 1e-4 and
  .[15].pos == 16 and .[15].token == 30' "$work/two.jsonl" > /dev/null || fail "the second window"
# A text past one window: every token but the first is scored once.
"$moe" eval --checkpoint "$ckpt" --text "$work/corpus.txt" > "$work/text.jsonl" 2> /dev/null
jq -se 'length > 40 and (.[0:-1] | map(.pos) == [range(1; length + 1)]) and .[-1].tokens == length - 1' \
  "$work/text.jsonl" > /dev/null || fail "--text windows"
# The dump: [T, d] = [16, 32], different layers differ.
"$moe" eval --checkpoint "$ckpt" --tokens "$work/one.txt" --dump-layer 0 --dump-file "$work/l0.json" > /dev/null 2>&1
"$moe" eval --checkpoint "$ckpt" --tokens "$work/one.txt" --dump-layer 1 --dump-file "$work/l1.json" > /dev/null 2>&1
jq -e '.layer == 0 and (.hidden | length) == 16 and (.hidden | map(length) | unique) == [32]' "$work/l0.json" \
  > /dev/null || fail "dump shape"
[[ $(jq -c .hidden "$work/l0.json") != $(jq -c .hidden "$work/l1.json") ]] || fail "layers 0 and 1 dump the same"
# Errors: one line naming what is wrong, exit 1; usage errors exit 2.
expect() {  # expect CODE PATTERN ARGS...
  local code=$1 pattern=$2; shift 2
  set +e; "$moe" eval --checkpoint "$ckpt" "$@" > "$work/out" 2> "$work/err"; local rc=$?; set -e
  [[ $rc -eq $code ]] || { cat "$work/err"; fail "exit $rc, not $code: $*"; }
  grep -qF -- "$pattern" "$work/err" || { cat "$work/err"; fail "no '$pattern': $*"; }
}
: > "$work/empty.txt"
expect 1 "empty.txt has 0 token(s): scoring needs at least 2" --tokens "$work/empty.txt"
echo "1 2 320" > "$work/big.txt"
expect 1 "token 320 at position 2 is outside the vocabulary [0, 320)" --tokens "$work/big.txt"
echo "1 x2" > "$work/bad.txt"
expect 1 "'x2' is not a token id" --tokens "$work/bad.txt"
expect 2 "--text excludes --tokens" --tokens "$work/one.txt" --text "$work/one.txt"
expect 1 "layer 2 is outside the model's layers [0, 2)" --tokens "$work/one.txt" --dump-layer 2 --dump-file "$work/x"
expect 2 "--dump-layer: needs --text or --tokens" --dump-layer 0 --dump-file "$work/x"
echo "score text ok"
