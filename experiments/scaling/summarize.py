#!/usr/bin/env python3
"""Turns run_scaling.sh's outputs into the README tables: per config and layout, tokens/s, MFU,
peak memory, step time, tokens per GPU per step, weak-scaling efficiency against the one-GPU run
(tokens/s per GPU over one GPU's tokens/s, at the same per-GPU batch), the pipeline bubble; then
the all-to-all bandwidth and the 50-step loss comparison.

Usage: summarize.py OUT_DIR
"""
import glob
import json
import os
import sys

out = sys.argv[1]


def load(path):
    with open(path) as f:
        lines = [line for line in f if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


benches = {}
for path in sorted(glob.glob(os.path.join(out, "bench_*.json"))):
    name = os.path.basename(path)[len("bench_"):-len(".json")]
    if name.startswith("dispatch_"):
        continue
    record = load(path)
    if record is not None:
        benches[name] = record

configs = sorted({name.split("_1gpu")[0] for name in benches if name.endswith("_1gpu")})
for config in configs:
    base = benches[config + "_1gpu"]
    print(f"\n{config}: {base['params'] / 1e9:.2f}B parameters, {base['active_params'] / 1e6:.0f}M active\n")
    print("| layout | GPUs | tokens/s | MFU | step | peak memory (rank 0) | tokens/GPU/step | weak scaling | bubble |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in benches.items():
        if not name.startswith(config + "_"):
            continue
        layout = name[len(config) + 1:]
        gpus = r["ranks"]
        efficiency = r["tokens_per_s"] / (gpus * base["tokens_per_s"])
        bubble = f"{r['bubble'] * 100:.0f}% (ideal {r['bubble_ideal'] * 100:.0f}%)" if "bubble" in r else ""
        mfu = f"{r['mfu'] * 100:.1f}%" if "mfu" in r else ""
        print(f"| {layout} | {gpus} | {r['tokens_per_s']:,.0f} | {mfu} | {r['step_ms']:.0f} ms | "
              f"{r['peak_memory_bytes'] / 1e9:.1f} GB | {r['tokens_per_step'] / gpus:,.0f} | {efficiency:.2f} | {bubble} |")

print("\n| all-to-all (dispatch + combine) | EP | GB/s per rank | ms |\n|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(out, "bench_dispatch_*.json"))):
    r = load(path)
    if r is not None:
        config = os.path.basename(r["config"]).removesuffix(".toml")
        print(f"| {config} | {r['ep']} | {r['alltoall_gb_per_s_per_rank']:.0f} | {r['dispatch_combine_ms']:.2f} |")

losses = os.path.join(out, "losses.txt")
if os.path.exists(losses):
    print("\nLosses against one GPU with the same global batch:\n")
    with open(losses) as f:
        print(f.read().strip())
