"""What the PyTorch anchors share (moe_layer_anchor.py, moe_small_anchor.py; attention_anchor.py and
dense_gemm_anchor.py for the timing): softmax top-k routing, SwiGLU, the routed experts as a PyTorch user
writes them today with torch._grouped_mm, and the timing.

Shapes: T tokens, d model width, E experts, f expert width, k experts per token.
"""
import statistics

import torch
import torch.nn.functional as F


def swiglu(h):
    """h [rows, 2f] (gate | up) -> silu(gate) * up [rows, f]."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def route_softmax_topk(x, router_weight, top_k):
    """x [T, d], router_weight [E, d] -> probs [T, E] fp32 (softmax over all experts), weights [T, k] in
    x's dtype (the top-k probabilities, not renormalised), ids [T, k] int64."""
    probs = F.linear(x, router_weight).float().softmax(dim=-1)
    weights, ids = probs.topk(top_k, dim=-1)
    return probs, weights.to(x.dtype), ids


def expert_offsets(sorted_ids, num_experts):
    """sorted_ids [T*k] ascending -> int32 [E]: offs[e] = end row of expert e (cumulative counts), on the device."""
    experts = torch.arange(num_experts, device=sorted_ids.device, dtype=sorted_ids.dtype)
    return torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)


def grouped_swiglu_experts(x, weights, ids, w_gate_up, w_down):
    """x [T, d] bf16, weights [T, k], ids [T, k], w_gate_up [E, d, 2f] bf16, w_down [E, f, d] bf16 -> [T, d].

    Sort the T*k (token, expert) slots by expert, gather their rows, one torch._grouped_mm per projection with
    the int32 cumulative offsets (no host synchronisation), then scale by the routing weight and scatter-add
    back to the tokens. Differentiable in x, weights, w_gate_up and w_down."""
    num_tokens, top_k = ids.shape
    sorted_ids, order = torch.sort(ids.reshape(-1), stable=True)
    offs = expert_offsets(sorted_ids, w_gate_up.shape[0])
    token_of_row = order // top_k
    rows = x.index_select(0, token_of_row)
    hidden = swiglu(torch._grouped_mm(rows, w_gate_up, offs=offs))
    out_rows = torch._grouped_mm(hidden, w_down, offs=offs)
    out_rows = out_rows * weights.reshape(-1).index_select(0, order).unsqueeze(1).to(out_rows.dtype)
    return out_rows.new_zeros(num_tokens, out_rows.shape[1]).index_add(0, token_of_row, out_rows)


def switch_aux_loss(probs, ids):
    """probs [T, E] fp32, ids [T, k] -> the Switch load-balancing loss E * sum_e f_e * P_e (f_e: fraction of
    the T*k slots routed to e, no gradient; P_e: mean router probability of e), as the engine defines it."""
    num_experts = probs.shape[1]
    counts = torch.histc(ids.reshape(-1).float(), bins=num_experts, min=0, max=num_experts)
    return num_experts * (counts / ids.numel() * probs.mean(dim=0)).sum()


def time_cuda_ms(step, warmup, iters):
    """Runs step() warmup times, then iters times between CUDA events; the peak-memory counter restarts after
    the warm-up. -> (ms per timed iteration, what the last step returned)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        last = step()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters, last


def median_ms(fn, warmup, iters):
    """Runs fn() warmup times, then iters times, each between its own CUDA events -> the median ms."""
    for _ in range(warmup):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def split_choices(parser, flag, value, known):
    """'a,b' -> ['a', 'b'], or a parser error naming the flag and the first unknown name."""
    names = value.split(",")
    for name in names:
        if name not in known:
            parser.error(f"{flag}: unknown name '{name}' (known: {', '.join(known)})")
    return names
