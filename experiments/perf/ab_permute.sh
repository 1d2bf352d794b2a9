#!/usr/bin/env bash
# Same-run A/B of the dispatch's row move: `moe bench op permute` (the sort with its row move, and
# the sort then gather_rows as the control that no tree changes) at MoE-small's layer (top-6 of 64,
# rows of 768), the fine-grained layer's (rows of 1024) and the Switch-like one's (top-1), with this
# checkout's build/moe and each TREE's build/moe in turn (built already, e.g. by ab_trees.sh), ROUNDS
# times (default 2). One JSON line per run, tagged with its tree, appended to OUT/ab_permute.jsonl.
# Usage (repo root on the GPU host): experiments/perf/ab_permute.sh OUT TREE...
set -uo pipefail
out=${1:?out dir}; shift
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
for round in $(seq "${ROUNDS:-2}"); do
  for t in . "$@"; do
    for shape in "--top-k 6 --d-model 768" "--top-k 6 --d-model 1024" "--top-k 1 --d-model 1024"; do
      # shellcheck disable=SC2086  # the shape is two flags
      "$t/build/moe" bench op permute --batch 16 --seq 1024 --experts 64 $shape --warmup 5 --iters 30 2>&1 | tail -1 \
        | sed "s|^{|{\"tree\":\"$t\",\"round\":$round,|" >> "$out/ab_permute.jsonl"
    done
  done
done
python3 - "$out/ab_permute.jsonl" <<'PY'
import json, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    runs[(r["top_k"], r["d_model"], r["tree"])].append(f'{r["fused_ms"]:.4f}/{r["unfused_ms"]:.4f}')
for (k, d, tree), v in sorted(runs.items()):
    print(f"top-{k} d {d:5d} {tree:14s} permute/sort+gather ms: " + "  ".join(v))
PY
