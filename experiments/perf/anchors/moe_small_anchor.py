#!/usr/bin/env python3
"""PyTorch anchor for `moe bench train experiments/perf/moe_small.toml`: end-to-end training tokens/s of
MoE-small as a PyTorch user writes it today, timed like the engine's bench (warm-up steps, then timed steps
between CUDA events; peak = torch.cuda.max_memory_allocated over the timed steps). One JSON line per mode.
PyTorch is the reference, never a dependency.

MoE-small: d 768, 12 layers, 12 heads, vocab 50304, sequence 1024, batch 16; every FFN 64 experts x 384,
top-6 (softmax over all experts, weights not renormalised), plus 2 shared experts x 384 (one SwiGLU FFN of
width 768) behind a sigmoid gate; Switch aux loss 0.01; RMSNorm, RoPE, SwiGLU, tied embeddings.
Modes:
  eager, compile  a torchtitan-style model: SDPA flash attention, the routed experts through
                  torch._grouped_mm after a sort by expert (moe_anchor_ops.py), fp32 weights under bf16
                  autocast (expert weights cast to bf16 in the forward, as torchtitan does), fused AdamW;
                  compile wraps it in torch.compile
  transformers    transformers' Qwen2MoeForCausalLM of the same shape (norm_topk_prob False, shared expert
                  768, router_aux_loss_coef 0.01, output_router_logits True, tied embeddings, sdpa attention,
                  experts implementation from --hf-experts), bf16 weights and fused AdamW on them (its
                  grouped_mm experts need bf16 weights: torch._grouped_mm is not autocast-aware). Qwen2's
                  q/k/v projections carry a bias (its default); the engine's do not.
All modes clip the gradient norm to 1.0, as gpt2_anchor.py. MFU as experiments/perf/README.md defines it:
tokens/s * (6 * active parameters + 12 * layers * d * seq) / 775 TFLOP/s.

Usage: moe_small_anchor.py [--modes eager,compile,transformers] [--batch 16] [--seq 1024] [--warmup 3]
                           [--steps 10] [--hf-experts grouped_mm] [--smoke]
--smoke: 2 layers, d 128, 2 heads, 8 experts x 64 top-2 (+ shared 128), seq 128, batch 2, 1 warm-up step
and 1 timed step.
"""
import argparse
import dataclasses
import json
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from moe_anchor_ops import (grouped_swiglu_experts, route_softmax_topk, split_choices, swiglu, switch_aux_loss,
                            time_cuda_ms)

MODES = ("eager", "compile", "transformers")


@dataclasses.dataclass
class Shape:
    vocab: int = 50304
    d: int = 768
    layers: int = 12
    heads: int = 12
    experts: int = 64
    d_expert: int = 384
    top_k: int = 6
    d_shared: int = 768  # 2 shared experts x 384
    aux_coef: float = 0.01


SMOKE = Shape(d=128, layers=2, heads=2, experts=8, d_expert=64, top_k=2, d_shared=128)


def rope_tables(seq, head_dim, theta=10000.0):
    """-> cos, sin [seq, head_dim] fp32 (rotate-half convention)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [B, S, H, hd], cos/sin [S, hd] -> x rotated, in x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(a.transpose(1, 2).reshape(b, s, d))


class MoeFeedForward(nn.Module):
    """Routed experts (grouped_mm) + the gated shared FFN. x [T, d] -> ([T, d], Switch aux loss)."""

    def __init__(self, c):
        super().__init__()
        self.top_k = c.top_k
        self.router = nn.Linear(c.d, c.experts, bias=False)
        self.w_gate_up = nn.Parameter(torch.empty(c.experts, c.d, 2 * c.d_expert))
        self.w_down = nn.Parameter(torch.empty(c.experts, c.d_expert, c.d))
        self.shared_gate_up = nn.Linear(c.d, 2 * c.d_shared, bias=False)
        self.shared_down = nn.Linear(c.d_shared, c.d, bias=False)
        self.shared_gate = nn.Linear(c.d, 1, bias=False)

    def forward(self, x):
        probs, weights, ids = route_softmax_topk(x, self.router.weight, self.top_k)
        routed = grouped_swiglu_experts(x.bfloat16(), weights, ids, self.w_gate_up.bfloat16(),
                                        self.w_down.bfloat16())
        shared = torch.sigmoid(self.shared_gate(x)) * self.shared_down(swiglu(self.shared_gate_up(x)))
        return routed + shared, switch_aux_loss(probs, ids)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = nn.RMSNorm(c.d, eps=1e-6)
        self.attn = Attention(c.d, c.heads)
        self.ffn_norm = nn.RMSNorm(c.d, eps=1e-6)
        self.ffn = MoeFeedForward(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        b, s, d = x.shape
        y, aux = self.ffn(self.ffn_norm(x).view(b * s, d))
        return x + y.view(b, s, d), aux


class MoeSmall(nn.Module):
    def __init__(self, c, seq):
        super().__init__()
        self.aux_coef = c.aux_coef
        self.embed = nn.Embedding(c.vocab, c.d)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.RMSNorm(c.d, eps=1e-6)
        cos, sin = rope_tables(seq, c.d // c.heads)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.embed(idx)
        aux = 0.0
        for blk in self.blocks:
            x, layer_aux = blk(x, self.cos, self.sin)
            aux = aux + layer_aux
        logits = F.linear(self.norm(x), self.embed.weight)  # tied embeddings
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        return loss + self.aux_coef * aux


def build_transformers(c, seq, hf_experts):
    """transformers' Qwen2MoeForCausalLM of shape c, bf16 on the GPU -> (model, loss(idx, targets), info)."""
    import transformers
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(vocab_size=c.vocab, hidden_size=c.d, num_hidden_layers=c.layers,
                            num_attention_heads=c.heads, num_key_value_heads=c.heads, max_position_embeddings=seq,
                            num_experts=c.experts, moe_intermediate_size=c.d_expert, num_experts_per_tok=c.top_k,
                            norm_topk_prob=False, shared_expert_intermediate_size=c.d_shared,
                            router_aux_loss_coef=c.aux_coef, output_router_logits=True, tie_word_embeddings=True,
                            use_cache=False)
    config._attn_implementation = "sdpa"
    config._experts_implementation = hf_experts  # transformers >= 5: eager, grouped_mm or batched_mm
    model = Qwen2MoeForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    model.train()

    def loss_of(idx, targets):  # labels = the inputs: the model shifts them; adds the aux loss itself
        return model(input_ids=idx, labels=idx).loss

    info = {"transformers": transformers.__version__,
            "hf_experts": getattr(model.config, "_experts_implementation", None)}
    return model, loss_of, info


def active_params(n_params, c):
    """Parameters a token uses: all but the (experts - top_k) routed experts it skips in each layer."""
    return n_params - c.layers * (c.experts - c.top_k) * 3 * c.d * c.d_expert


def run(mode, c, args):
    torch.manual_seed(1234)
    dev = "cuda"
    info = {}
    if mode == "transformers":
        model, loss_of, info = build_transformers(c, args.seq, args.hf_experts)
        autocast = False
    else:
        model = MoeSmall(c, args.seq).to(dev)
        loss_of = torch.compile(model) if mode == "compile" else model
        autocast = True
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    gen = torch.Generator(device=dev).manual_seed(1)

    def step():
        idx = torch.randint(0, c.vocab, (args.batch, args.seq), device=dev, generator=gen)
        tgt = torch.randint(0, c.vocab, (args.batch, args.seq), device=dev, generator=gen)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step_ms, loss = time_cuda_ms(step, args.warmup, args.steps)
    tps = args.batch * args.seq * 1000.0 / step_ms
    active = active_params(n_params, c)
    peak = torch.cuda.max_memory_allocated()
    return {
        "anchor": "pytorch_moe_small", "mode": mode, "tokens_per_s": round(tps),
        "step_ms": round(step_ms, 2), "peak_memory_bytes": peak,
        "peak_memory_gb": round(peak / 1e9, 2), "params": n_params, "active_params": active,
        "mfu_775": round(tps * (6 * active + 12 * c.layers * c.d * args.seq) / 775e12, 4),
        "loss": float(loss), "batch": args.batch, "seq": args.seq, "warmup": args.warmup, "steps": args.steps,
        "shape": dataclasses.asdict(c), "torch": torch.__version__, **info,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--hf-experts", default="grouped_mm", help="transformers' experts implementation")
    ap.add_argument("--smoke", action="store_true", help="tiny model, seq 128, batch 2, 1 step")
    args = ap.parse_args()
    modes = split_choices(ap, "--modes", args.modes, MODES)
    c = Shape()
    if args.smoke:
        c, args.seq, args.batch, args.warmup, args.steps = SMOKE, 128, 2, 1, 1
    failed = False
    for mode in modes:
        t0 = time.time()
        try:
            result = run(mode, c, args)
            result["wall_s"] = round(time.time() - t0, 1)
        except Exception as e:  # report and go on with the other modes
            failed = True
            traceback.print_exc()
            result = {"anchor": "pytorch_moe_small", "mode": mode, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result), flush=True)
        torch.cuda.empty_cache()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
