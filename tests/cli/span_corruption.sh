#!/usr/bin/env bash
# The span-corruption commands at toy size (docs/objectives.md): `moe tokenize --special-tokens`,
# `moe train` of an MoE encoder-decoder (the loss falls), `moe eval` (the loss over the target
# positions), `moe generate` filling the marked spans (one prompt and --prompts), and the commands
# that refuse an encoder-decoder naming why. Usage: span_corruption.sh MOE_BINARY
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$(dirname "$0")/tiny_corpus.sh" "$work/corpus.txt" 400
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data" --vocab-size 320 --special-tokens --sentinels 2 \
  > /dev/null 2>&1
# seq_len 32: raw windows of 34 tokens, 5 dropped in 2 spans, a target of 8.
cat > "$work/config.toml" <<TOML
[model]
objective = "span_corruption"
encoder_layers = 1
decoder_seq_len = 8
vocab_size = 320
d_model = 32
num_layers = 2
num_heads = 2
num_kv_heads = 2
seq_len = 32
d_ff = 64
[moe]
num_experts = 4
top_k = 2
d_expert = 32
[train]
steps = 60
micro_batch_size = 8
log_every = 1
eval_every = 60
eval_batches = 2
save_every = 60
run_dir = "$work/run"
device = "cpu"
[optim]
lr = 1e-2
[data]
train_path = "$work/data/train.tok"
val_path = "$work/data/val.tok"
tokenizer = "$work/data/tokenizer.model"
TOML
"$moe" train "$work/config.toml" > "$work/train.log" 2>&1 || { cat "$work/train.log"; fail "moe train"; }
jq -se '[.[] | select(.loss != null)] | (.[0:5] | map(.loss) | add / 5) - (.[-5:] | map(.loss) | add / 5) > 1' \
  "$work/run/metrics.jsonl" > /dev/null || fail "the loss did not fall by 1 over 60 steps"
jq -se '[.[] | select(.loss != null)][0].moe | length == 2' "$work/run/metrics.jsonl" > /dev/null \
  || fail "the encoder's and the decoder's MoE layers are not both in the metrics"

"$moe" eval "$work/config.toml" --checkpoint latest --batches 2 > "$work/eval.json" 2> /dev/null
jq -e '.val_tokens == 2 * 8 * 8 and .val_loss > 0' "$work/eval.json" > /dev/null \
  || fail "eval: 2 batches of 8 windows, 8 target positions each: $(cat "$work/eval.json")"

"$moe" generate --checkpoint "$work/run" --prompt "the <extra_id_0> of the <extra_id_1> end" --temperature 0 \
  > "$work/fill.txt" 2> "$work/fill.err"
[[ $(wc -l < "$work/fill.txt") -eq 1 ]] || fail "one filled line expected: $(cat "$work/fill.txt")"
grep -q "^the .* of the .* end$" "$work/fill.txt" || fail "the prompt's text is not kept: $(cat "$work/fill.txt")"
grep -q "extra_id" "$work/fill.txt" && fail "a marker was left: $(cat "$work/fill.txt")"
grep -q "generate: filled 2 span(s)" "$work/fill.err" || fail "stderr: $(cat "$work/fill.err")"
printf '{"text": "a <extra_id_0> b"}\n{"text": "<extra_id_0> c <extra_id_1>"}\n' > "$work/prompts.jsonl"
"$moe" generate --checkpoint "$work/run" --prompts "$work/prompts.jsonl" --temperature 0 > "$work/fill.jsonl" 2> /dev/null
jq -se 'length == 2 and (.[0].spans | length) == 1 and (.[1].spans | length) == 2 and .[1].index == 1' \
  "$work/fill.jsonl" > /dev/null || fail "--prompts: $(cat "$work/fill.jsonl")"

expect_error() {  # expect_error PATTERN COMMAND...: fails, one error line with PATTERN
  local pattern=$1
  shift
  if "$@" > "$work/out" 2> "$work/err"; then fail "$* succeeded"; fi
  grep -qF -- "$pattern" "$work/err" || fail "no '$pattern' in: $(cat "$work/err")"
}
expect_error "has none" "$moe" generate --checkpoint "$work/run" --prompt "no markers"
expect_error "--stop: an encoder-decoder fills the marked spans" \
  "$moe" generate --checkpoint "$work/run" --prompt "a <extra_id_0>" --stop x
expect_error "makes an encoder-decoder: it fills the sentinel spans" \
  "$moe" eval --checkpoint "$work/run" --text "$work/corpus.txt"
expect_error "moe plan models decoder-only and encoder-only models" "$moe" plan "$work/config.toml"
expect_error "parallel.tp = 2: the encoder-decoder (model.encoder_layers = 1) does not run tensor parallelism" \
  "$moe" train "$work/config.toml" --set parallel.tp=2
echo "span corruption CLI: ok"
