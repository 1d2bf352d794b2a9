#!/usr/bin/env bash
# Where a layer's time goes, by hardware counters: Nsight Compute (ncu) over one forward + backward of
# `moe bench layer` for each of LAYERS (default "switch fine_grained"), the MoE kernels only (the grouped
# GEMMs, the row gathers and scatters, the activations), each kernel's speed-of-light, memory, warp-state
# and occupancy sections as CSV in OUT/ncu_<layer>.csv, and a short table (duration, DRAM, SM and
# memory throughput, achieved occupancy, warp cycles per issued instruction, DRAM bytes read and
# written) printed last. ncu replays each kernel, so its durations are not the
# bench's; read them against each other. --clock-control none leaves the GPU's clocks as they are.
# Usage (repo root on the GPU host, build/moe built, .devdeps carried): experiments/perf/profile_layer.sh OUT
set -uo pipefail
out=${1:?out dir}
mkdir -p "$out"
D=$PWD/.devdeps/usr
export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[[ -n $ncu && -x $ncu ]] || { echo "profile_layer.sh: no ncu on this machine" >&2; exit 1; }
kernels='regex:grouped_|gather|place|combine|unpermute|activation|scatter'
for layer in ${LAYERS:-switch fine_grained}; do
  # --warmup 0 --iters 1: one layer step, forward and backward (the dense chain after it is cuBLAS's)
  "$ncu" --clock-control none -k "$kernels" --launch-count 40 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --metrics dram__bytes_read.sum,dram__bytes_write.sum \
    --csv --page details build/moe bench layer "experiments/perf/layers/$layer.toml" --tokens 16384 \
    --warmup 0 --iters 1 > "$out/ncu_$layer.csv" 2> "$out/ncu_$layer.err"
  echo "ncu $layer exit $?"
done
python3 - "$out" ${LAYERS:-switch fine_grained} <<'EOF'
import csv, sys, collections
out = sys.argv[1]
want = {"Duration": "dur", "DRAM Throughput": "dram%", "Compute (SM) Throughput": "sm%", "Memory Throughput": "mem%",
        "Achieved Occupancy": "occ%", "Warp Cycles Per Issued Instruction": "cycles/issue",
        "dram__bytes_read.sum": "read", "dram__bytes_write.sum": "written"}
for layer in sys.argv[2:]:
    try:
        rows = list(csv.DictReader(l for l in open(f"{out}/ncu_{layer}.csv") if l.startswith('"')))
    except OSError:
        continue
    kernels = collections.OrderedDict()
    for r in rows:
        key = (r.get("ID", "?"), r.get("Kernel Name", "?")[:48])
        k = kernels.setdefault(key, {})
        name = r.get("Metric Name", "")
        if name in want:
            k[want[name]] = f'{r.get("Metric Value", "")} {r.get("Metric Unit", "")}'.strip()
    print(f"== {layer}")
    for (kid, name), k in kernels.items():
        print(f"{kid:>4} {name:48s} " + "  ".join(f"{m}={k.get(m, '-')}" for m in want.values()))
EOF
