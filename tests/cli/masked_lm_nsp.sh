#!/usr/bin/env bash
# The masked-LM quickstart with next-sentence prediction at toy size (docs/objectives.md): `moe
# train` writes nsp_loss and nsp_accuracy with every step, `moe eval --checkpoint latest` reports
# val_nsp_loss and val_nsp_accuracy beside the MLM loss and accuracy, and the commands that cannot
# run it refuse naming why. The config is experiments/objectives/masked_lm_nsp.toml made small.
# Usage: masked_lm_nsp.sh MOE_BINARY SOURCE_DIR
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$(dirname "$0")/tiny_corpus.sh" "$work/corpus.txt" 400
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data" --vocab-size 320 --special-tokens --sentinels 0 \
  > "$work/tokenize.log" 2>&1 || { cat "$work/tokenize.log"; fail "moe tokenize"; }
small=(--set model.vocab_size=320 --set model.d_model=32 --set model.num_heads=2 --set model.num_kv_heads=2
       --set model.seq_len=32 --set model.d_ff=64 --set moe.d_expert=32 --set train.steps=20
       --set train.micro_batch_size=8 --set train.log_every=1 --set train.eval_every=20 --set train.eval_batches=2
       --set train.save_every=20 --set "train.run_dir=$work/run" --set train.device=cpu
       --set "data.train_path=$work/data/train.tok" --set "data.val_path=$work/data/val.tok"
       --set "data.tokenizer=$work/data/tokenizer.model")
config=$src/experiments/objectives/masked_lm_nsp.toml
"$moe" train "$config" "${small[@]}" > "$work/train.log" 2>&1 || { cat "$work/train.log"; fail "moe train"; }
jq -se '[.[] | select(.loss != null)] | length == 20 and all(.nsp_loss > 0 and .nsp_accuracy >= 0
        and .nsp_accuracy <= 1 and .nsp_loss < .loss)' "$work/run/metrics.jsonl" > /dev/null \
  || fail "every step's record carries nsp_loss (part of the loss) and nsp_accuracy"

"$moe" eval "$config" "${small[@]}" --checkpoint latest --batches 2 > "$work/eval.json" 2> /dev/null \
  || fail "moe eval"
jq -e '.val_loss > 0 and .val_accuracy >= 0 and .val_nsp_loss > 0 and .val_nsp_accuracy >= 0
       and .val_nsp_accuracy <= 1' "$work/eval.json" > /dev/null || fail "eval: $(cat "$work/eval.json")"

expect_error() {  # expect_error PATTERN COMMAND...: fails, one error line with PATTERN
  local pattern=$1
  shift
  if "$@" > "$work/out" 2> "$work/err"; then fail "$* succeeded"; fi
  grep -qF -- "$pattern" "$work/err" || fail "no '$pattern' in: $(cat "$work/err")"
}
expect_error "objective.nsp = true is not built for tensor or pipeline parallelism" \
  "$moe" train "$config" "${small[@]}" --set parallel.tp=2
expect_error "needs model.objective = 'masked_lm'" \
  "$moe" train "$config" "${small[@]}" --set model.objective=causal_lm
echo "masked_lm_nsp: ok"
