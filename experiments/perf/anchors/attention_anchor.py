#!/usr/bin/env python3
"""PyTorch flash-SDPA anchor for `moe bench op attention` (run on the GPU host, where PyTorch is).

The same shapes through torch.nn.functional.scaled_dot_product_attention restricted to the flash
backend (sdpa_kernel(SDPBackend.FLASH_ATTENTION)), bf16, layout [B, H, S, D] (--layout bshd gives
the engine's token-major memory layout, viewed as [B, H, S, D]), timed with CUDA events: the median
of --iters runs after --warmup, for the forward (with autograd on, as in training), the backward
and both. One JSON line per shape, with the engine's FLOP count (src/tools/bench_op.h):
forward 4*B*H*S^2*D (halved when causal), backward 2.5x forward.

  python3 attention_anchor.py --batch 16 --seq 1024 --heads 12 --head-dim 64 --causal
  python3 attention_anchor.py --shapes 16x1024x12x64,4x4096x16x64   # B x S x H x D, causal
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from moe_anchor_ops import median_ms


def forward_flops(batch, seq, heads, head_dim, causal):
    full = 4.0 * batch * heads * seq * seq * head_dim
    return full / 2 if causal else full


def make_inputs(batch, seq, heads, kv_heads, head_dim, layout):
    """q [B, H, S, D], k and v [B, Hkv, S, D] (bf16, requiring grad), dout like q."""
    def tensor(h, lo, hi):
        shape = (batch, seq, h, head_dim) if layout == "bshd" else (batch, h, seq, head_dim)
        t = torch.empty(shape, device="cuda", dtype=torch.bfloat16).uniform_(lo, hi)
        return t.transpose(1, 2) if layout == "bshd" else t

    q, k, v = tensor(heads, -2, 2), tensor(kv_heads, -2, 2), tensor(kv_heads, -1, 1)
    dout = tensor(heads, -1, 1)
    return [t.requires_grad_() for t in (q, k, v)] + [dout]


def bench(batch, seq, heads, kv_heads, head_dim, causal, warmup, iters, layout):
    q, k, v, dout = make_inputs(batch, seq, heads, kv_heads, head_dim, layout)
    gqa = kv_heads != heads
    expanded = False

    def attention(q, k, v):
        if gqa and not expanded:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        if gqa:
            try:
                attention(q, k, v)
            except RuntimeError:  # this PyTorch's flash backend has no GQA: repeat the kv heads
                expanded = True
                rep = heads // kv_heads
                k = k.detach().repeat_interleave(rep, dim=1).requires_grad_()
                v = v.detach().repeat_interleave(rep, dim=1).requires_grad_()
        out = attention(q, k, v)

        def forward():
            attention(q, k, v)

        def backward():
            torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

        def forward_backward():
            o = attention(q, k, v)
            torch.autograd.grad(o, (q, k, v), dout)

        fwd_ms = median_ms(forward, warmup, iters)
        bwd_ms = median_ms(backward, warmup, iters)
        fwd_bwd_ms = median_ms(forward_backward, warmup, iters)

    flops = forward_flops(batch, seq, heads, head_dim, causal)

    def tflops(f, ms):
        return f / (ms * 1e-3) / 1e12

    return {
        "op": "attention", "impl": "torch sdpa flash", "torch": torch.__version__,
        "device": torch.cuda.get_device_name(), "layout": layout, "kv_expanded": expanded,
        "batch": batch, "seq": seq, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "causal": causal, "iters": iters,
        "fwd_ms": fwd_ms, "bwd_ms": bwd_ms, "fwd_bwd_ms": fwd_bwd_ms,
        "fwd_tflops": tflops(flops, fwd_ms), "bwd_tflops": tflops(2.5 * flops, bwd_ms),
        "fwd_bwd_tflops": tflops(3.5 * flops, fwd_bwd_ms),
        "flops": "fwd 4*B*H*S^2*D (/2 causal), bwd 2.5x fwd",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=0, help="default: --heads")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--shapes", default="", help="comma-separated BxSxHxD shapes (override the four flags)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--layout", choices=["bhsd", "bshd"], default="bhsd")
    a = p.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",") if s] or [
        (a.batch, a.seq, a.heads, a.head_dim)]
    for batch, seq, heads, head_dim in shapes:
        kv_heads = a.kv_heads if a.kv_heads > 0 and not a.shapes else heads
        print(json.dumps(bench(batch, seq, heads, kv_heads, head_dim, a.causal, a.warmup, a.iters, a.layout)),
              flush=True)


if __name__ == "__main__":
    main()
