#!/usr/bin/env bash
# The command line's conventions (docs/cli.md): --version, defaults in --help, eval from a checkpoint
# alone with JSON alone on stdout, `latest` and run directories as --checkpoint, upcycle's positional
# CONFIG and a "resume with" line that keeps the --set overrides, the README's hash-table example.
# Usage: tool_ux.sh MOE_BINARY
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$moe" --version | grep -qE '^moe-engine [0-9]+\.[0-9]+\.[0-9]+$' || fail "--version"
"$moe" generate --help | grep -q '^Usage: moe generate' || fail "program name in --help"
"$moe" generate --help | grep -qE -- '--max-new-tokens INT:POSITIVE=64' || fail "default in generate --help"
"$moe" tokenize --help | grep -qE -- '--vocab-size INT:POSITIVE=8192' || fail "default in tokenize --help"
"$moe" eval --help | grep -qE -- '--checkpoint TEXT=latest' || fail "default in eval --help"
# Required options and empty lists show no default.
if "$moe" upcycle --help | grep -qE -- 'REQUIRED.*=|=\[\]'; then fail "noise defaults in upcycle --help"; fi

"$(dirname "$0")/tiny_run.sh" "$moe" "$work"
"$moe" train "$work/config.toml" > "$work/train.log"
# The progress line and metrics.jsonl (docs/metrics.md): grad norm, tokens seen, memory, a timestamp.
grep -qE '^step 4/4 \| loss [0-9.]+ \| aux [0-9.]+ \| lr [0-9.e+-]+ \| gnorm [0-9.e+-]+ \| [0-9]+ tok/s \| 256 tokens \| mem [0-9.]+ [KMG]?i?B \(peak [0-9.]+ [KMG]?i?B\) \| eta 0s \| [0-9-]+T[0-9:]+Z$' \
  "$work/train.log" || { cat "$work/train.log"; fail "progress line"; }
jq -se 'map(select(.loss)) | last | .tokens_seen == 256 and .memory_peak_bytes >= .memory_allocated_bytes
        and .memory_allocated_bytes > 0 and (.time | test("^[0-9-]+T[0-9:]+Z$")) and .grad_norm > 0' \
  "$work/run/metrics.jsonl" > /dev/null || fail "metrics.jsonl fields"
# eval from the run directory alone (the checkpoint carries its config): stdout is one JSON line.
"$moe" eval --checkpoint "$work/run" > "$work/eval.json" 2> "$work/eval.err"
[[ $(wc -l < "$work/eval.json") -eq 1 ]] || { cat "$work/eval.json"; fail "eval stdout is not one line"; }
jq -e '.val_loss > 0 and .val_tokens > 0' "$work/eval.json" > /dev/null || fail "eval | jq"
grep -q "loaded checkpoint .*step_4" "$work/eval.err" || fail "eval's human text is not on stderr"
"$moe" eval --run-dir "$work/run" --batches 1 2> /dev/null | jq -e '.checkpoint | endswith("step_4")' > /dev/null \
  || fail "eval --checkpoint latest --run-dir"
"$moe" eval "$work/config.toml" --checkpoint latest 2> /dev/null | jq -e .val_ppl > /dev/null || fail "eval CONFIG"
# generate: 'latest' in --run-dir and a run directory give the newest checkpoint's text.
"$moe" generate --checkpoint latest --run-dir "$work/run" --max-new-tokens 4 --temperature 0 > "$work/g1" 2> /dev/null
"$moe" generate --checkpoint "$work/run" --max-new-tokens 4 --temperature 0 > "$work/g2" 2> /dev/null
"$moe" generate --checkpoint "$work/run/checkpoints/step_4" --max-new-tokens 4 --temperature 0 > "$work/g3" 2> /dev/null
cmp "$work/g1" "$work/g3" && cmp "$work/g2" "$work/g3" || fail "generate --checkpoint latest / RUN_DIR"

# The README's example: a balanced hash table from a token shard.
"$moe" hash-table --kind balanced --experts 4 --vocab-size 320 --data "$work/data/train.tok" \
  --out "$work/table.safetensors" > /dev/null
test -s "$work/table.safetensors" || fail "hash-table example"

# upcycle: CONFIG positional (--config still accepted), the resume command keeps the --set overrides.
"$moe" train "$work/config.toml" --set moe.num_experts=0 --set train.run_dir="$work/dense" > /dev/null
"$moe" upcycle "$work/config.toml" --from "$work/dense" --out "$work/up" --set moe.d_expert=64 \
  --set train.run_dir="$work/moe run" --set train.steps=5 | tee "$work/upcycle.log"
resume=$(sed -n 's/^resume with: moe //p' "$work/upcycle.log")
[[ "$resume" == "train $work/config.toml --set moe.d_expert=64 --set 'train.run_dir=$work/moe run' --set train.steps=5 --set train.resume=$work/up" ]] \
  || fail "resume command: $resume"
eval "\"\$moe\" $resume" > "$work/resume.log" 2>&1 || { cat "$work/resume.log"; fail "the printed resume command"; }
grep -q "step 5/5" "$work/resume.log" || fail "the printed resume command does not train to step 5"
"$moe" upcycle --config "$work/config.toml" --from "$work/dense/checkpoints/step_4" --out "$work/up2" \
  --set moe.d_expert=64 > /dev/null || fail "upcycle --config alias"
echo "tool ux ok"
