#!/usr/bin/env python3
"""PyTorch anchor for `moe bench op dense_gemm` and the memory ceilings its weight gradients meet.

For each (in, out) at tokens = 16384 (MoE-small's dense layers: attention q|k|v 768 -> 2304 and output
768 -> 768, the shared experts' gate|up 768 -> 1536 and down 768 -> 768): the median ms and TFLOP/s of
torch.mm for the forward x @ w, the input gradient dy @ w^T and the weight gradient x^T @ dy (bf16 out, as
autograd makes it; the engine writes fp32 and adds). Then the device's write and copy rates on 3.2 GB of
fp32 (the Switch-like layer's expert gradient): zero_() (write only) and copy_() (read + write), counted as
bytes moved per second. PyTorch is the reference, never a dependency. One JSON line per measurement.

Usage: dense_gemm_anchor.py [--tokens 16384] [--warmup 5] [--iters 20]
"""
import argparse
import json

import torch

from moe_anchor_ops import median_ms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    a = parser.parse_args()
    dev = torch.device("cuda")
    for d_in, d_out in [(768, 2304), (768, 768), (768, 1536)]:
        x = torch.randn(a.tokens, d_in, device=dev, dtype=torch.bfloat16)
        w = torch.randn(d_in, d_out, device=dev, dtype=torch.bfloat16) * 0.05
        dy = torch.randn(a.tokens, d_out, device=dev, dtype=torch.bfloat16)
        flops = 2.0 * a.tokens * d_in * d_out
        r = {"anchor": "torch_mm", "tokens": a.tokens, "in": d_in, "out": d_out}
        for name, fn in [("forward", lambda: x @ w), ("input_grad", lambda: dy @ w.t()),
                         ("weight_grad", lambda: x.t() @ dy)]:
            ms = median_ms(fn, a.warmup, a.iters)
            r[name + "_ms"] = ms
            r[name + "_tflops"] = flops / (ms * 1e-3) / 1e12
        print(json.dumps(r), flush=True)
    n = 805_306_368  # the Switch-like layer's expert gradient: 64 x 1024 x 4096 x 3 fp32 values, 3.2 GB
    buf = torch.empty(n, device=dev, dtype=torch.float32)
    other = torch.empty_like(buf)
    write_ms = median_ms(lambda: buf.zero_(), a.warmup, a.iters)
    copy_ms = median_ms(lambda: other.copy_(buf), a.warmup, a.iters)
    print(json.dumps({"anchor": "memory", "bytes": 4 * n, "write_ms": write_ms,
                      "write_tb_per_s": 4 * n / (write_ms * 1e-3) / 1e12, "copy_ms": copy_ms,
                      "copy_tb_per_s": 8 * n / (copy_ms * 1e-3) / 1e12}), flush=True)


if __name__ == "__main__":
    main()
