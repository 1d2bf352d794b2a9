#!/usr/bin/env bash
# Same-run A/B of source trees on the GPU host: builds `moe` in this checkout and in each TREE (a
# copy of the sources with one change, carried as an ignored folder such as .ab/<name>), then runs
# the standard layers (LAYERS, default "switch fine_grained mixtral"; empty: none) with each grouped kernel of
# KERNELS (default "wgmma") and, unless TRAIN=0, MoE-small, with each binary in turn, ROUNDS times
# (default 2), so that the trees share the device's state; with PERMUTE=1 also `moe bench op permute` (the
# forward dispatch) at MoE-small's, the fine-grained and the Switch-like shapes. One JSON line per run, tagged with its
# tree, to OUT/ab_trees.jsonl (started afresh); each tree's build log to OUT/build_<n>.log. Trees of
# probe patches (experiments/perf/probes/) compute wrong gradients by design: run them with TRAIN=0.
# Usage (repo root, .devdeps carried): [LAYERS=...] [KERNELS=...] [TRAIN=0] [ROUNDS=N] [PERMUTE=1] \
#        experiments/perf/ab_trees.sh OUT TREE...
set -uo pipefail
out=${1:?out dir}; shift
(($# > 0)) || { echo "ab_trees.sh: name at least one tree to compare" >&2; exit 2; }
mkdir -p "$out"
: > "$out/ab_trees.jsonl"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
build() {  # tree, log -> the tree's build/moe, built once (a tree of binaries only, as candidates_call.sh leaves, as is)
  [[ -x $1/build/moe && ! -f $1/CMakeLists.txt ]] && return 0
  (cd "$1" && { [[ -f build/build.ninja ]] || cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$D" -DMOE_TESTS=OFF; } && cmake --build build -j "$(nproc)" --target moe) > "$2" 2>&1 \
    || { echo "ab_trees.sh: the build of $1 failed (the end of $2):" >&2; tail -20 "$2" >&2; return 1; }
}
trees=(. "$@")
for i in "${!trees[@]}"; do build "${trees[$i]}" "$out/build_$i.log" || exit 1; done
for round in $(seq "${ROUNDS:-2}"); do
  for t in "${trees[@]}"; do
    for layer in ${LAYERS-switch fine_grained mixtral}; do
      for kernel in ${KERNELS:-wgmma}; do
        "$t/build/moe" bench layer "experiments/perf/layers/$layer.toml" --tokens 16384 --warmup 3 --iters 10 \
          --breakdown --grouped-kernel "$kernel" 2>&1 | tail -1 | sed "s|^{|{\"tree\":\"$t\",\"round\":$round,|" \
          >> "$out/ab_trees.jsonl"
      done
    done
    [[ ${TRAIN:-1} == 0 ]] || "$t/build/moe" bench train experiments/perf/moe_small.toml --warmup 3 --steps 10 \
      --set train.log_every=1000 2>&1 | tail -1 | sed "s|^{|{\"tree\":\"$t\",\"round\":$round,|" >> "$out/ab_trees.jsonl"
    # the forward dispatch alone (the sort with its row move; the sort then gather_rows is the control)
    for shape in ${PERMUTE:+"--top-k 6 --d-model 768" "--top-k 6 --d-model 1024" "--top-k 1 --d-model 1024"}; do
      # shellcheck disable=SC2086  # the shape is two flags
      "$t/build/moe" bench op permute --batch 16 --seq 1024 --experts 64 $shape --warmup 5 --iters 30 2>&1 | tail -1 \
        | sed "s|^{|{\"tree\":\"$t\",\"round\":$round,|" >> "$out/ab_trees.jsonl"
    done
  done
done
python3 - "$out/ab_trees.jsonl" <<'EOF'
import json, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("op") == "permute":
        what, kernel = f'permute k{r["top_k"]} d{r["d_model"]}', "ms, control"
        runs[(what, r["tree"], kernel)].append(f'{r["fused_ms"]:.4f} ({r["unfused_ms"]:.4f})')
        continue
    what = r.get("config", "?").split("/")[-1].removesuffix(".toml")
    value = r.get("expert_tflops") or r.get("tokens_per_s")
    wgrad = r.get("ms_by_op", {}).get("grouped_matmul_weight_grad")
    runs[(what, r["tree"], r.get("grouped_kernel", ""))].append(f"{value:,.1f}" + (f" (wgrad {wgrad:.3f} ms)" if wgrad else ""))
for (what, tree, kernel), vals in sorted(runs.items()):
    print(f"{what:18s} {tree:22s} {kernel:13s} " + "  ".join(vals))
EOF
