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
"$moe" generate --checkpoint "$work/run/checkpoints/step_6" --prompt "The quick" --max-new-tokens 8 --temperature 0 \
  | tee "$work/sample.log"
grep -q "^The quick" "$work/sample.log"
# The benchmark, with the per-kind breakdown of the op time and the host waits per step.
"$moe" bench train "$work/config.toml" --warmup 1 --steps 2 --breakdown | tee "$work/bench.json"
grep -q '"tokens_per_s":' "$work/bench.json"
grep -q '"host_waits_per_step":' "$work/bench.json"
grep -q '"breakdown":{.*"ms_per_step":{.*"gemm":' "$work/bench.json"
grep -q '"attention_backward":' "$work/bench.json"
grep -q '"optimizer":' "$work/bench.json"
echo "end-to-end ok"
