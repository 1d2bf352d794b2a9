#!/usr/bin/env python3
"""Prints the per-step losses of two runs side by side and the largest relative difference.

Usage: compare_losses.py A/metrics.jsonl B/metrics.jsonl
"""
import json
import sys


def losses(path):
    out = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = record["loss"]
    return out


a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = 0.0
for step in sorted(set(a) & set(b)):
    rel = abs(a[step] - b[step]) / abs(a[step])
    worst = max(worst, rel)
    print(f"step {step:4d}  {a[step]:.6f}  {b[step]:.6f}  rel {rel:.2e}")
print(f"steps compared: {len(set(a) & set(b))}, max relative difference: {worst:.3e}")
