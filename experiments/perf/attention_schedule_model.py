#!/usr/bin/env python3
"""List-scheduling model of the causal flash-attention grids: how far the last block ends past an
even share of the work, for the two block orders (a slice's blocks innermost, or every slice's
heaviest block first). Greedy: each block starts on the first multiprocessor slot to free up, in
the grid's linear order, as the hardware starts them.

Defaults are MoE-small's backward: 16 x 12 slices of 8 key blocks of 128 keys, each running
16 - 2n query steps of 64 rows (plus `--overhead` steps of loads and stores), one resident block
a multiprocessor on 132 of them. `--forward` models the forward instead (8 query blocks of 128
rows, block m running m + 1 key tiles of 128 keys, two resident blocks a multiprocessor).
Usage: experiments/perf/attention_schedule_model.py [--forward] [--sms 132] [--overhead 0.5]
"""
import argparse
import heapq


def makespan(durations, slots):
    free = [0.0] * slots
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
    return max(free)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--forward", action="store_true")
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--slices", type=int, default=16 * 12)
    ap.add_argument("--overhead", type=float, default=0.5)
    a = ap.parse_args()
    if a.forward:
        ranks, slots = 8, 2 * a.sms
        work = [m + 1 + a.overhead for m in reversed(range(ranks))]  # heaviest (last query block) first
    else:
        ranks, slots = 8, a.sms
        work = [16 - 2 * n + a.overhead for n in range(ranks)]  # heaviest (first key block) first
    slice_inner = [w for _ in range(a.slices) for w in work]
    longest_first = [w for w in work for _ in range(a.slices)]
    even = sum(slice_inner) / slots
    for name, order in (("a slice's blocks innermost", slice_inner), ("longest first", longest_first)):
        end = makespan(order, slots)
        print(f"{name}: ends at {end:.1f} against an even share of {even:.1f} ({100 * (end / even - 1):.1f}% over)")


if __name__ == "__main__":
    main()
