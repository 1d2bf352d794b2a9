#!/usr/bin/env bash
# The CLI tests' tiny run: a generated corpus tokenized into WORK/data and WORK/config.toml, an
# MoE model training 4 steps into WORK/run (evaluating and saving every 2). Usage: tiny_run.sh MOE WORK
set -euo pipefail
moe=$1
work=$2
"$(dirname "$0")/tiny_corpus.sh" "$work/corpus.txt" 400
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data" --vocab-size 300
cat > "$work/config.toml" <<TOML
[model]
vocab_size = 320
d_model = 32
num_layers = 2
num_heads = 2
num_kv_heads = 2
seq_len = 16
d_ff = 64
[moe]
num_experts = 4
top_k = 2
d_expert = 32
[train]
steps = 4
micro_batch_size = 4
log_every = 1
eval_every = 2
eval_batches = 2
save_every = 2
run_dir = "$work/run"
device = "cpu"
[data]
train_path = "$work/data/train.tok"
val_path = "$work/data/val.tok"
tokenizer = "$work/data/tokenizer.model"
TOML
