#!/usr/bin/env python3
"""NCCL all-to-all anchor for `moe bench dispatch` (run on the GPU host, where PyTorch is).

torch.distributed's all_to_all_single (NCCL backend, equal splits, bf16) at the byte counts the
engine's dispatcher moves, timed with CUDA events like the engine's bench: before each timed call
every rank meets at a barrier; rank 0's median of --iters calls after --warmup is reported (the
slowest rank's median beside it). Launch with
torchrun, one process per GPU:

  torchrun --standalone --nproc_per_node 2 alltoall_anchor.py --bytes moe_small/dispatch=75497472
  torchrun --standalone --nproc_per_node 2 alltoall_anchor.py --shape moe_small=16384,6,768

--bytes NAME=B: B bytes per rank leave for the other ranks (the engine's rows_sent_remote x row
bytes for a dispatch, rows_received_remote x row bytes for a combine); the send buffer holds
B x world / (world - 1) bytes, split equally, so the part that crosses to other ranks is B.
--shape NAME=TOKENS,TOP_K,D_MODEL: the dispatch of TOKENS x TOP_K rows of D_MODEL bf16 routed
uniformly over the ranks (the send buffer is all the rows, (world - 1) / world of them remote).
GB/s counts the remote bytes per rank over the median time (the engine's
alltoall_gb_per_s_per_rank convention); algbw_gb_per_s counts the whole send buffer.
Rank 0 prints one JSON line.
"""
import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist

ELEMENT_BYTES = 2  # bf16, the engine's compute dtype on GPUs


def parse_sizes(args, world):
    """[(name, remote bytes per rank)] from --bytes and --shape."""
    sizes = []
    for spec in args.bytes:
        name, value = spec.split("=", 1)
        sizes.append((name, int(value)))
    for spec in args.shape:
        name, value = spec.split("=", 1)
        tokens, top_k, d_model = (int(v) for v in value.split(","))
        total = tokens * top_k * d_model * ELEMENT_BYTES
        sizes.append((name, total * (world - 1) // world))
    return sizes


def send_elements(remote_bytes, world):
    """Elements of the send buffer whose remote part is remote_bytes, a multiple of world."""
    total = remote_bytes * world / (world - 1) / ELEMENT_BYTES
    per_peer = max(1, round(total / world))
    return per_peer * world


def time_alltoall(elements, warmup, iters, device):
    send = torch.randn(elements, device=device).to(torch.bfloat16)
    recv = torch.empty_like(send)
    for _ in range(warmup):
        dist.all_to_all_single(recv, send)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        dist.barrier(device_ids=[device.index])
        torch.cuda.synchronize()
        start.record()
        dist.all_to_all_single(recv, send)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    # Rank 0's median, as the engine's bench reports; the slowest rank's median beside it.
    median = statistics.median(times)
    slowest = torch.tensor([median], device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return median, min(times), slowest.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", action="append", default=[], metavar="NAME=B")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=TOKENS,TOP_K,D_MODEL")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world < 2:
        raise SystemExit("alltoall_anchor.py needs at least 2 processes (torchrun --nproc_per_node 2)")
    sizes = parse_sizes(args, world)
    if not sizes:
        raise SystemExit("give at least one --bytes NAME=B or --shape NAME=TOKENS,TOP_K,D_MODEL")

    results = []
    for name, remote in sizes:
        elements = send_elements(remote, world)
        remote_actual = elements * ELEMENT_BYTES * (world - 1) // world
        ms, ms_min, ms_slowest_rank = time_alltoall(elements, args.warmup, args.iters, device)
        results.append({
            "name": name,
            "remote_bytes_per_rank": remote_actual,
            "send_bytes_per_rank": elements * ELEMENT_BYTES,
            "ms": ms,
            "ms_min": ms_min,
            "ms_slowest_rank": ms_slowest_rank,
            "gb_per_s": remote_actual / (ms / 1e3) / 1e9,
            "algbw_gb_per_s": elements * ELEMENT_BYTES / (ms / 1e3) / 1e9,
        })
    if rank == 0:
        nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        print(json.dumps({
            "anchor": "torch.distributed.all_to_all_single (NCCL), bf16, equal splits, CUDA events, median",
            "world": world,
            "device": torch.cuda.get_device_name(device),
            "torch": torch.__version__,
            "nccl": nccl,
            "warmup": args.warmup,
            "iters": args.iters,
            "sizes": results,
        }), flush=True)
    dist.barrier(device_ids=[local_rank])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
