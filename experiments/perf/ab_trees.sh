#!/usr/bin/env bash
# Same-run A/B of source trees on the GPU host: builds `moe` in this checkout and in each TREE (a
# copy of the sources with one change, carried as an ignored folder such as .ab/<name>), then runs
# the standard layers (LAYERS, default "switch fine_grained mixtral"; empty: none) with each grouped kernel of
# KERNELS (default "wgmma") and, unless TRAIN=0, MoE-small, with each binary in turn, ROUNDS times
# (default 2), so that the trees share the device's state. One JSON line per run, tagged with its
# tree, to OUT/ab_trees.jsonl (started afresh); each tree's build log to OUT/build_<n>.log. Trees of
# probe patches (experiments/perf/probes/) compute wrong gradients by design: run them with TRAIN=0.
# Usage (repo root, .devdeps carried): [LAYERS=...] [KERNELS=...] [TRAIN=0] [ROUNDS=N] \
#        experiments/perf/ab_trees.sh OUT TREE...
set -uo pipefail
out=${1:?out dir}; shift
(($# > 0)) || { echo "ab_trees.sh: name at least one tree to compare" >&2; exit 2; }
mkdir -p "$out"
: > "$out/ab_trees.jsonl"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
build() {  # tree, log -> the tree's build/moe, built once
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
    what = r.get("config", "?").split("/")[-1].removesuffix(".toml")
    value = r.get("expert_tflops") or r.get("tokens_per_s")
    wgrad = r.get("ms_by_op", {}).get("grouped_matmul_weight_grad")
    runs[(what, r["tree"], r.get("grouped_kernel", ""))].append((value, wgrad))
for (what, tree, kernel), vals in sorted(runs.items()):
    print(f"{what:14s} {tree:22s} {kernel:13s} " + "  ".join(f"{v:,.1f}" + (f" (wgrad {w:.3f} ms)" if w else "") for v, w in vals))
EOF
