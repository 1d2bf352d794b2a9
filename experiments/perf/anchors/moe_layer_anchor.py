#!/usr/bin/env python3
"""PyTorch anchor for `moe bench layer`: one MoE FFN layer (SwiGLU experts, gate|up then down), forward +
backward, bf16, 16384 tokens, at the standard shapes, as a PyTorch user writes it today. Run on the GPU host,
where PyTorch (and transformers, for qwen2_moe_block) is; PyTorch is the reference, never a dependency.

Shapes (d; experts x width; top-k):
  fine_grained  d 1024; 64 x 512;  top-6
  mixtral       d 2048; 8 x 5632;  top-2
  switch        d 1024; 64 x 4096; top-1
  moe_small     d 768;  64 x 384;  top-6, plus 2 shared experts x 384 (one SwiGLU FFN of width 768 behind a
                sigmoid gate, as Qwen2-MoE's shared expert)
Implementations (all route with linear + softmax + top-k, weights not renormalised):
  loop             the classic per-expert loop (HF style: each expert finds its tokens, index_select, FFN,
                   index_add back; one host synchronisation per expert), one weight pair per expert
  grouped_mm       sort the slots by expert, gather, torch._grouped_mm for the up ([E, d, 2f]) and the down
                   ([E, f, d]) projections with int32 cumulative offsets, weighted scatter-add back
  qwen2_moe_block  transformers' Qwen2MoeSparseMoeBlock of the same shape (experts implementation from
                   --hf-experts; shared_expert_intermediate_size 0 for the shapes without shared experts: its
                   zero-width shared FFN and its gate still run, a few elementwise passes over [T, d])
  dense_chain      the practical ceiling: X[T*k, d] @ W1[d, 2f], SwiGLU, @ W2[f, d], no routing
expert_tflops counts the expert matmuls only, the same formula for every implementation:
fwd+bwd = 3 * 2 * (T*k) * (d*2f + f*d). The router's and the shared experts' FLOPs are not counted; their
time is (the shared FFN runs in loop, grouped_mm and qwen2_moe_block for moe_small, not in dense_chain).
Each iteration is a forward and the gradients of the input and every weight (torch.autograd.grad, no
accumulation into .grad); --warmup iterations, then --iters between CUDA events: ms per iteration.
One JSON line per shape and implementation on stdout.

Usage: moe_layer_anchor.py [--shapes fine_grained,mixtral,switch,moe_small] [--impls loop,grouped_mm,...]
                           [--warmup 3] [--iters 10] [--tokens 16384] [--hf-experts grouped_mm] [--smoke]
--smoke: tiny shapes (d 128, <= 8 experts of 64), 256 tokens, 1 warm-up and 1 timed iteration, and a check
that grouped_mm computes what the loop computes from the same weights.
"""
import argparse
import json
import sys
import traceback

import torch
import torch.nn.functional as F

from moe_anchor_ops import grouped_swiglu_experts, route_softmax_topk, split_choices, swiglu, time_cuda_ms

SHAPES = {
    "fine_grained": dict(d=1024, experts=64, d_expert=512, top_k=6, d_shared=0),
    "mixtral": dict(d=2048, experts=8, d_expert=5632, top_k=2, d_shared=0),
    "switch": dict(d=1024, experts=64, d_expert=4096, top_k=1, d_shared=0),
    "moe_small": dict(d=768, experts=64, d_expert=384, top_k=6, d_shared=768),
}
IMPLS = ("loop", "grouped_mm", "qwen2_moe_block", "dense_chain")
DEV, DTYPE = "cuda", torch.bfloat16


def smoke_shape(s):
    return dict(d=128, experts=min(s["experts"], 8), d_expert=64, top_k=min(s["top_k"], 2),
                d_shared=128 if s["d_shared"] else 0)


def expert_flops(s, tokens):
    return 3 * 2 * tokens * s["top_k"] * (s["d"] * 2 * s["d_expert"] + s["d_expert"] * s["d"])


def weight(*shape):
    return (torch.randn(*shape, device=DEV, dtype=DTYPE) * 0.02).requires_grad_()


def shared_weights(s):
    """The moe_small shared experts: [gate_up [d, 2*ds], down [ds, d], gate [d, 1]], or [] without them."""
    if not s["d_shared"]:
        return []
    return [weight(s["d"], 2 * s["d_shared"]), weight(s["d_shared"], s["d"]), weight(s["d"], 1)]


def add_shared(out, x, shared):
    """out [T, d] + sigmoid(x @ gate) * SwiGLU-FFN(x) when there are shared experts."""
    if not shared:
        return out
    gate_up, down, gate = shared
    return out + torch.sigmoid(x @ gate) * (swiglu(x @ gate_up) @ down)


def loop_forward(x, router, experts, top_k, shared):
    """x [T, d], router [E, d], experts: E pairs (gate_up [d, 2f], down [f, d]) -> [T, d]."""
    _, weights, ids = route_softmax_topk(x, router, top_k)
    out = torch.zeros_like(x)
    hit = F.one_hot(ids, len(experts)).permute(2, 1, 0)  # [E, k, T]
    for e, (gate_up, down) in enumerate(experts):
        slot, token = torch.where(hit[e])  # host synchronisation, as in the classic loop
        if token.numel() == 0:
            continue
        y = swiglu(x.index_select(0, token) @ gate_up) @ down
        out.index_add_(0, token, y * weights[token, slot].unsqueeze(1))
    return add_shared(out, x, shared)


def grouped_forward(x, router, gate_up, down, top_k, shared):
    """x [T, d], router [E, d], gate_up [E, d, 2f], down [E, f, d] -> [T, d]."""
    _, weights, ids = route_softmax_topk(x, router, top_k)
    return add_shared(grouped_swiglu_experts(x, weights, ids, gate_up, down), x, shared)


def build(impl, s, tokens, hf_experts):
    """-> (forward() -> output, [tensors to differentiate: the input first], info for the JSON line)."""
    d, num_experts, f, k = s["d"], s["experts"], s["d_expert"], s["top_k"]
    if impl == "dense_chain":
        x, w1, w2 = weight(tokens * k, d), weight(d, 2 * f), weight(f, d)
        return (lambda: swiglu(x @ w1) @ w2), [x, w1, w2], {}
    x = torch.randn(tokens, d, device=DEV, dtype=DTYPE).requires_grad_()
    if impl == "qwen2_moe_block":
        return build_qwen2_block(s, x, hf_experts)
    router, shared = weight(num_experts, d), shared_weights(s)
    if impl == "loop":
        experts = [(weight(d, 2 * f), weight(f, d)) for _ in range(num_experts)]
        params = [w for pair in experts for w in pair]
        return (lambda: loop_forward(x, router, experts, k, shared)), [x, router, *params, *shared], {}
    if impl == "grouped_mm":
        gate_up, down = weight(num_experts, d, 2 * f), weight(num_experts, f, d)
        return (lambda: grouped_forward(x, router, gate_up, down, k, shared)), [x, router, gate_up, down,
                                                                                *shared], {}
    raise ValueError(f"--impls: unknown implementation '{impl}' (known: {', '.join(IMPLS)})")


def build_qwen2_block(s, x, hf_experts):
    import transformers
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    heads = max(1, s["d"] // 64)
    config = Qwen2MoeConfig(hidden_size=s["d"], num_attention_heads=heads, num_key_value_heads=heads,
                            num_hidden_layers=1, num_experts=s["experts"], moe_intermediate_size=s["d_expert"],
                            num_experts_per_tok=s["top_k"], norm_topk_prob=False,
                            shared_expert_intermediate_size=s["d_shared"], hidden_act="silu")
    config._experts_implementation = hf_experts  # transformers >= 5: eager, grouped_mm or batched_mm
    block = Qwen2MoeSparseMoeBlock(config).to(device=DEV, dtype=DTYPE)
    with torch.no_grad():  # a bare block is not initialised by post_init (its router may start at zero)
        for p in block.parameters():
            p.normal_(0.0, 0.02)

    def forward():
        out = block(x.view(1, *x.shape))
        return (out[0] if isinstance(out, tuple) else out).view(x.shape)  # transformers 4 returns (out, logits)

    info = {"transformers": transformers.__version__,
            "hf_experts": getattr(config, "_experts_implementation", None), "hf_shared_width": s["d_shared"]}
    return forward, [x, *block.parameters()], info


def bench(name, s, impl, args):
    torch.manual_seed(1234)
    forward, inputs, info = build(impl, s, args.tokens, args.hf_experts)
    dout = torch.randn_like(forward())

    def step():
        torch.autograd.grad(forward(), inputs, dout, allow_unused=True)

    ms, _ = time_cuda_ms(step, args.warmup, args.iters)
    flops = expert_flops(s, args.tokens)
    return {"anchor": "moe_layer", "shape": name, "impl": impl, "ms": round(ms, 4),
            "expert_tflops": round(flops / (ms * 1e-3) / 1e12, 2), "tokens": args.tokens, **s,
            "expert_flops": flops, "peak_memory_bytes": torch.cuda.max_memory_allocated(),
            "warmup": args.warmup, "iters": args.iters, "torch": torch.__version__,
            "device": torch.cuda.get_device_name(), **info}


def check_grouped_matches_loop(name, s, tokens):
    """grouped_mm and the loop from the same weights: the largest difference relative to the largest output."""
    torch.manual_seed(99)
    d, num_experts, f, k = s["d"], s["experts"], s["d_expert"], s["top_k"]
    x, router, shared = torch.randn(tokens, d, device=DEV, dtype=DTYPE), weight(num_experts, d), shared_weights(s)
    gate_up, down = weight(num_experts, d, 2 * f), weight(num_experts, f, d)
    with torch.no_grad():
        grouped = grouped_forward(x, router, gate_up, down, k, shared).float()
        loop = loop_forward(x, router, list(zip(gate_up.unbind(0), down.unbind(0))), k, shared).float()
    rel = ((grouped - loop).abs().max() / loop.abs().max().clamp_min(1e-12)).item()
    return {"anchor": "moe_layer", "check": "grouped_mm_vs_loop", "shape": name, "max_rel_diff": rel,
            "ok": rel < 2e-2}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hf-experts", default="grouped_mm", help="transformers' experts implementation")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 iteration, grouped_mm-vs-loop check")
    args = p.parse_args()
    shapes = split_choices(p, "--shapes", args.shapes, list(SHAPES))
    impls = split_choices(p, "--impls", args.impls, IMPLS)
    if args.smoke:
        args.tokens, args.warmup, args.iters = 256, 1, 1
    failed = False
    for name in shapes:
        s = smoke_shape(SHAPES[name]) if args.smoke else SHAPES[name]
        if args.smoke:
            result = check_grouped_matches_loop(name, s, args.tokens)
            failed |= not result["ok"]
            print(json.dumps(result), flush=True)
        for impl in impls:
            try:
                print(json.dumps(bench(name, s, impl, args)), flush=True)
            except Exception as e:  # report and go on with the other implementations
                failed = True
                traceback.print_exc()
                print(json.dumps({"anchor": "moe_layer", "shape": name, "impl": impl,
                                  "error": f"{type(e).__name__}: {e}"}), flush=True)
            torch.cuda.empty_cache()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
