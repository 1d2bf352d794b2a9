#!/usr/bin/env bash
# The whole CLI on a tiny generated corpus: tokenize, train with an MoE layer, resume from the
# latest checkpoint, evaluate and generate. Usage: end_to_end.sh MOE_BINARY
set -euo pipefail
moe=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$(dirname "$0")/tiny_run.sh" "$moe" "$work"
"$moe" train "$work/config.toml"
test -s "$work/run/config.toml"
test -s "$work/run/checkpoints/step_4/model.safetensors"
grep -q '"val_loss"' "$work/run/metrics.jsonl"
# Resume from the latest checkpoint and train two more steps.
"$moe" train "$work/config.toml" --set train.steps=6 --set train.resume=latest | tee "$work/resume.log"
grep -q "loaded checkpoint .*step_4" "$work/resume.log"
grep -q "step 6/6" "$work/resume.log"
"$moe" eval "$work/config.toml" --checkpoint latest | tee "$work/eval.log"
grep -q '"val_ppl"' "$work/eval.log"
# Generation must add tokens after the prompt (the prompt is echoed, so matching it alone proves
# nothing): greedy decoding runs to --max-new-tokens and the text grows past the prompt; the same
# greedy run twice gives the same text; sampling with top-k and top-p also generates.
ckpt="$work/run/checkpoints/step_6"
"$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 8 --temperature 0 \
  > "$work/sample.log" 2> "$work/sample.err"
cat "$work/sample.log" "$work/sample.err"
grep -q "^The quick" "$work/sample.log"
grep -qE "^generate: [1-8] new tokens after a [0-9]+-token prompt" "$work/sample.err"
[[ $(tr -d '\n' < "$work/sample.log") != "The quick" ]]
"$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 8 --temperature 0 2> /dev/null \
  | cmp - "$work/sample.log"
"$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 8 --temperature 0.8 --top-k 5 \
  --top-p 0.9 --seed 3 2> "$work/sampled.err" | tee "$work/sampled.log"
grep -qE "^generate: [1-8] new tokens" "$work/sampled.err"
# The KV cache gives the full-window tokens (--no-cache), greedy and sampled alike; 20 new tokens
# after the prompt also outgrow seq_len = 16 (the window then slides on both paths).
for flags in "--temperature 0" "--temperature 1.2 --top-k 40 --seed 5"; do
  "$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 20 $flags 2> /dev/null > "$work/cached.log"
  "$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 20 $flags --no-cache 2> /dev/null \
    | cmp - "$work/cached.log"
done
# A batch from a file (one prompt per line; JSONL with --jsonl-field): one JSON line per prompt, each
# the text its prompt gives alone.
printf 'The quick\n\nA b\n' > "$work/prompts.txt"
printf '{"body": "The quick"}\n{"body": "A b"}\n' > "$work/prompts.jsonl"
"$moe" generate --checkpoint "$ckpt" --prompts "$work/prompts.txt" --max-new-tokens 8 --temperature 0 \
  2> /dev/null > "$work/batch.jsonl"
"$moe" generate --checkpoint "$ckpt" --prompts "$work/prompts.jsonl" --jsonl-field body --max-new-tokens 8 \
  --temperature 0 2> /dev/null | cmp - "$work/batch.jsonl"
[[ $(wc -l < "$work/batch.jsonl") -eq 2 ]]
jq -se '.[0].index == 0 and .[0].prompt == "The quick" and .[0].new_tokens >= 1' "$work/batch.jsonl" > /dev/null
for i in 0 1; do
  prompt=$(jq -r "select(.index == $i) | .prompt" "$work/batch.jsonl")
  alone=$("$moe" generate --checkpoint "$ckpt" --prompt "$prompt" --max-new-tokens 8 --temperature 0 2> /dev/null)
  [[ "$alone" == "$prompt$(jq -r "select(.index == $i) | .text" "$work/batch.jsonl")" ]]
done
# --stop cuts the text before the stop string and ends the sequence there.
cont=$(jq -r 'select(.index == 0) | .text' "$work/batch.jsonl")
if [[ ${#cont} -ge 3 ]]; then
  stop=${cont:2:1}
  "$moe" generate --checkpoint "$ckpt" --prompt "The quick" --max-new-tokens 8 --temperature 0 --stop "$stop" \
    > "$work/stopped.log" 2> "$work/stopped.err"
  [[ $(cat "$work/stopped.log") == "The quick${cont%%"$stop"*}" ]]
  grep -q "stopped at a --stop string" "$work/stopped.err"
fi
# Generation speed, cached and not, from the trained run and from the config (random weights).
"$moe" bench generate "$work/run" --batch 2 --prompt-len 4 --new-tokens 4 2> /dev/null | tee "$work/bench_gen.json"
jq -e '.cached.decode_tokens_per_s > 0 and .uncached.prefill_tokens_per_s > 0 and .batch == 2' \
  "$work/bench_gen.json" > /dev/null
"$moe" bench generate "$work/config.toml" 2> /dev/null | jq -e '.prompt_len + .new_tokens == 16' > /dev/null
# A flipped byte in the checkpoint's tensor data is refused, naming the file; --no-verify loads it.
cp -r "$ckpt" "$work/flipped"
file="$work/flipped/model.safetensors"
at=$(($(stat -c %s "$file") - 3))
byte=$(od -An -tu1 -j "$at" -N1 "$file" | tr -d ' ')
printf "\\x$(printf %02x $((byte ^ 64)))" | dd of="$file" bs=1 seek="$at" conv=notrunc status=none
if "$moe" generate --checkpoint "$work/flipped" --max-new-tokens 2 > "$work/flipped.log" 2>&1; then
  echo "generate accepted a corrupt checkpoint"; cat "$work/flipped.log"; exit 1
fi
grep -q "checkpoint file $work/flipped/model.safetensors fails its checksum" "$work/flipped.log"
"$moe" generate --checkpoint "$work/flipped" --max-new-tokens 2 --no-verify > /dev/null 2>&1
# The benchmark, with the per-kind and per-op breakdown of the op time and the host waits per step.
"$moe" bench train "$work/config.toml" --warmup 1 --steps 2 --breakdown | tee "$work/bench.json"
grep -q '"tokens_per_s":' "$work/bench.json"
grep -q '"host_waits_per_step":' "$work/bench.json"
grep -q '"breakdown":{.*"ms_per_step":{.*"gemm":' "$work/bench.json"
grep -q '"attention_backward":' "$work/bench.json"
grep -q '"optimizer":' "$work/bench.json"
grep -q '"ms_per_step_by_op":{.*"matmul":' "$work/bench.json"
grep -q '"host_ms_per_step_by_op":{.*"matmul":' "$work/bench.json"
echo "end-to-end ok"
