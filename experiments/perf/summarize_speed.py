#!/usr/bin/env python3
"""Prints the speed table of one run_speed.sh output folder: the engine's benches with their
breakdown, and the PyTorch anchors of the same run (with the ratios for GPT-2; the MoE layer and
MoE-small anchors as they ran).

Usage: summarize_speed.py OUT_DIR [--against BENCH_JSON]
  --against: an earlier `moe bench train --breakdown` JSON (e.g. part 8's
  results/speed_2026-12-05/run_e/bench_moe_small_noside.json): each breakdown's ops are printed
  beside that run's, for finding where time moved (a cross-run comparison: a diagnosis, not a claim).
"""
import json
import pathlib
import statistics
import sys


def read_json_lines(path):
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def print_against(by_op, reference, path):
    """Each op of by_op (ms per step) beside the reference breakdown's, largest change first."""
    ref = reference.get("ms_per_step_by_op", {})
    names = set(by_op) | set(ref)
    moved = sorted(names, key=lambda k: -abs(by_op.get(k, 0.0) - ref.get(k, 0.0)))[:14]
    print(f"  against {path}: " + ", ".join(
        f"{k} {ref.get(k, 0.0):.2f} -> {by_op.get(k, 0.0):.2f}" for k in moved))


def main():
    args = sys.argv[1:]
    against = None
    if "--against" in args:
        at = args.index("--against")
        against_path = args[at + 1]
        against = read_json_lines(pathlib.Path(against_path))[-1]["breakdown"]
        del args[at:at + 2]
    out = pathlib.Path(args[0])
    anchors = {r["mode"]: r for r in read_json_lines(out / "anchor_gpt2.jsonl")}
    for name in ("gpt2_small_dense", "moe_small", "moe_small_nolog", "moe_small_nolog_noupdate", "moe_small_nolog_update",
                 "moe_small_nolog_noside", "moe_small_nolog_wgmma", "moe_small_nolog_wgmma_narrow", "gpt2_small_moe64",
                 "moe_small_noside", "moe_small_host"):
        rows = read_json_lines(out / f"bench_{name}.json")
        if not rows:
            continue
        r = rows[-1]
        line = (f"{name}: {r['tokens_per_s']:,.0f} tok/s, step {r['step_ms']:.1f} ms, "
                f"MFU {100 * r.get('mfu', 0):.1f}%, peak {r['peak_memory_bytes'] / 1e9:.2f} GB, "
                f"host waits/step {r.get('host_waits_per_step', 0):.0f}")
        print(line)
        if name == "gpt2_small_dense":
            for mode, a in anchors.items():
                print(f"  vs PyTorch {mode}: {a['tokens_per_s']:,} tok/s -> ratio {r['tokens_per_s'] / a['tokens_per_s']:.2f}")
        b = r.get("breakdown")
        if b:
            parts = sorted(b["ms_per_step"].items(), key=lambda kv: -kv[1])
            print(f"  breakdown (step {b['step_ms']:.1f} ms, {b['ops_per_step']:.0f} ops, idle {b['idle_ms_per_step']:.1f} ms): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in parts))
            top = sorted(b.get("ms_per_step_by_op", {}).items(), key=lambda kv: -kv[1])[:12]
            if top:
                print("  top ops: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
            if against is not None:
                print_against(b.get("ms_per_step_by_op", {}), against, against_path)
            host = sorted(b.get("host_ms_per_step_by_op", {}).items(), key=lambda kv: -kv[1])[:6]
            if host:
                print(f"  host in ops {b['host_ops_ms_per_step']:.1f} ms/step (enqueue {r['host_enqueue_ms_per_step']:.1f}): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in host))
    update_ab = read_json_lines(out / "bench_moe_small_update_ab.jsonl")
    for overlap in (False, True):
        runs = [r["tokens_per_s"] for r in update_ab if r.get("overlap_update") is overlap]
        if runs:
            mean = statistics.mean(runs)
            spread = statistics.stdev(runs) if len(runs) > 1 else 0.0
            print(f"moe_small_nolog, overlap_update={str(overlap).lower()}: {mean:,.0f} ± {spread:,.0f} tok/s over "
                  f"{len(runs)} runs ({', '.join(f'{v:,.0f}' for v in runs)})")
    for r in read_json_lines(out / "bench_layer.jsonl"):
        by_op = sorted(r.get("ms_by_op", {}).items(), key=lambda kv: -kv[1])[:6]
        print(f"layer {pathlib.Path(r['config']).stem} [{r['grouped_kernel']}]: {r['expert_tflops']:.1f} expert TFLOP/s "
              f"(dense chain {r['dense_tflops']:.1f}), layer {r['layer_ms']:.3f} ms"
              + ("; " + ", ".join(f"{k} {v:.3f}" for k, v in by_op) if by_op else ""))
    for r in read_json_lines(out / "dense_gemm.jsonl"):
        if r.get("op") == "dense_gemm" or r.get("anchor") == "torch_mm":
            who = "engine" if r.get("op") == "dense_gemm" else "torch.mm"
            print(f"dense GEMM {r['in']} -> {r['out']} ({who}): forward {r['forward_tflops']:.0f}, input grad "
                  f"{r['input_grad_tflops']:.0f}, weight grad {r['weight_grad_tflops']:.0f} TFLOP/s")
        elif r.get("anchor") == "memory":
            print(f"memory: write {r['write_tb_per_s']:.2f} TB/s, copy {r['copy_tb_per_s']:.2f} TB/s")
    for r in read_json_lines(out / "op_grouped_gemm.jsonl"):
        print(f"op grouped_gemm [{r.get('grouped_kernel', '?')}] skew {r.get('skew', 0)} (largest expert "
              f"{r.get('largest_expert_rows', '?')} rows): fwd {r['fwd_ms']:.3f} ms, bwd {r['bwd_ms']:.3f} ms, "
              f"weight grads alone {r.get('wgrad_ms', float('nan')):.3f} ms ({r.get('wgrad_tflops', float('nan')):.0f} TFLOP/s)")
    for r in read_json_lines(out / "op_cross_entropy.json"):
        print(f"op cross_entropy: two ops {r['two_ops_ms']:.3f} ms, at once {r['with_grad_ms']:.3f} ms "
              f"({r['with_grad_gbps']:.0f} GB/s)")
    for name in ("rope", "add_rmsnorm", "add_layernorm"):
        for r in read_json_lines(out / f"op_{name}.json"):
            print(f"op {name}: fwd {r['fwd_ms']:.3f} ms ({r['fwd_gbps']:.0f} GB/s), bwd {r['bwd_ms']:.3f} ms "
                  f"({r['bwd_gbps']:.0f} GB/s)")
    for r in read_json_lines(out / "anchor_moe_layer.jsonl"):
        if "impl" in r:
            what = r.get("error") or f"{r['ms']:.3f} ms, {r['expert_tflops']:.1f} expert TFLOP/s"
            print(f"PyTorch MoE layer {r['shape']} {r['impl']}: {what}")
    for r in read_json_lines(out / "anchor_moe_small.jsonl"):
        what = r.get("error") or (f"{r['tokens_per_s']:,} tok/s, step {r['step_ms']:.1f} ms, "
                                  f"peak {r['peak_memory_bytes'] / 1e9:.2f} GB")
        print(f"PyTorch MoE-small {r['mode']}: {what}")


if __name__ == "__main__":
    main()
