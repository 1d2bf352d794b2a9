#!/usr/bin/env python3
"""PyTorch anchor for `moe bench train experiments/perf/gpt2_small_dense.toml`: the same GPT-2 small
shape as a PyTorch user writes it today (SDPA flash attention, fused AdamW, bf16 autocast over fp32
weights, optionally torch.compile), timed like the engine's bench (warm-up steps, then timed steps
between CUDA events). One JSON line per mode. PyTorch is the reference, never a dependency.

Usage: gpt2_anchor.py [--batch 16] [--seq 1024] [--warmup 3] [--steps 10] [--modes eager,compile]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


class Block(nn.Module):
    def __init__(self, d, heads, d_ff):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d_ff)
        self.fc_out = nn.Linear(d_ff, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, d_ff, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_ff) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied, as in the engine's config
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def params_of(model):
    return sum(p.numel() for p in model.parameters())


def run(mode, args):
    torch.manual_seed(1234)
    dev = "cuda"
    model = GPT(50304, 768, 12, 12, 3072, args.seq).to(dev)
    n_params = params_of(model)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = torch.compile(model) if mode == "compile" else model
    gen = torch.Generator(device=dev).manual_seed(1)

    def step():
        idx = torch.randint(0, 50304, (args.batch, args.seq), device=dev, generator=gen)
        tgt = torch.randint(0, 50304, (args.batch, args.seq), device=dev, generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(args.steps):
        loss = step()
    stop.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(stop) / 1000.0
    tokens = args.batch * args.seq * args.steps
    flops_per_token = 6 * n_params + 12 * 12 * 768 * args.seq  # the anchors' MFU definition
    tps = tokens / seconds
    return {
        "anchor": "pytorch_gpt2_small", "mode": mode, "tokens_per_s": round(tps),
        "step_ms": round(1000 * seconds / args.steps, 2), "params": n_params,
        "mfu_775": round(tps * flops_per_token / 775e12, 4),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "loss": float(loss), "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="eager,compile")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    for mode in args.modes.split(","):
        t0 = time.time()
        result = run(mode, args)
        result["wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(result), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
