#!/usr/bin/env bash
# Attention on one H200: the engine's flash kernels (`moe bench op attention`) and PyTorch's flash
# SDPA (anchors/attention_anchor.py) side by side in one run, same shapes, same FLOP count, then a
# table of ratios. Run from the repo root on the GPU host (with .devdeps carried, as run_h200.sh).
# Usage: experiments/perf/run_attention.sh OUT_DIR [--no-causal]   (ITERS=20 WARMUP=5 by default)
set -uo pipefail
out=${1:?out dir}
mask=${2:---causal}
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
iters=${ITERS:-20}
warmup=${WARMUP:-5}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if [[ ! -x build/moe ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" > "$out/configure.log" 2>&1 \
    || { tail -30 "$out/configure.log"; exit 1; }
  cmake --build build -j "$(nproc)" --target moe > "$out/build.log" 2>&1 \
    || { grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
fi
# Resource use of the flash kernels (registers, spills, tensor-core and ldmatrix instructions).
if command -v cuobjdump > /dev/null; then
  obj=$(find build -name 'flash_attention_*.cu.o' | sort)
  for o in $obj; do
    echo "== $o"
    cuobjdump -res-usage "$o" 2>/dev/null | grep -E "Function|REG" | sed 's/^ *//'
    cuobjdump -sass "$o" 2>/dev/null | awk '/Function :/{f=$3} /HMMA/{h[f]++} /LDSM/{l[f]++} /LDL|STL/{s[f]++}
      END {for (k in h) printf "%s HMMA %d LDSM %d local-memory %d\n", k, h[k], l[k], s[k]}'
  done > "$out/flash_sass.txt"
fi
# B * S = 16384 tokens; H * D = 768 (GPT-2 small) and 1024.
shapes=(16x1024x12x64 16x1024x16x64 16x1024x6x128 16x1024x8x128
        4x4096x12x64 4x4096x16x64 4x4096x6x128 4x4096x8x128)
: > "$out/engine.jsonl"
for s in "${shapes[@]}"; do
  IFS=x read -r b seq h d <<< "$s"
  build/moe bench op attention --batch "$b" --seq "$seq" --heads "$h" --head-dim "$d" "$mask" \
    --warmup "$warmup" --iters "$iters" 2>&1 | tail -1 | tee -a "$out/engine.jsonl"
done
python3 experiments/perf/anchors/attention_anchor.py --shapes "$(IFS=,; echo "${shapes[*]}")" "$mask" \
  --warmup "$warmup" --iters "$iters" 2>&1 | tee "$out/anchor.jsonl"
python3 - "$out/engine.jsonl" "$out/anchor.jsonl" <<'PY' | tee "$out/table.md"
import json, sys
def load(path):
    rows = {}
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        rows[(r["batch"], r["seq"], r["heads"], r["head_dim"], r["causal"])] = r
    return rows
engine, torch = load(sys.argv[1]), load(sys.argv[2])
print("| B x S x H x D | causal | engine fwd / bwd / fwd+bwd TFLOP/s | torch flash fwd / bwd / fwd+bwd TFLOP/s"
      " | fwd+bwd ratio (torch ms / engine ms) |")
print("|---|---|---|---|---|")
for key in sorted(engine, key=lambda k: (k[1], k[3], k[2])):
    e, t = engine[key], torch.get(key)
    tf = lambda r: "%.0f / %.0f / %.0f" % (r["fwd_tflops"], r["bwd_tflops"], r["fwd_bwd_tflops"]) if r else "-"
    ratio = "%.2f" % (t["fwd_bwd_ms"] / e["fwd_bwd_ms"]) if t else "-"
    print("| %dx%dx%dx%d | %s | %s | %s | %s |" % (key[0], key[1], key[2], key[3], key[4], tf(e), tf(t), ratio))
PY
