#!/usr/bin/env python3
"""Bytes the Hopper grouped weight gradient moves at the standard layer shapes (16,384 tokens,
SwiGLU experts, balanced routing): the operands its bulk copies read from L2 and the f32 dw it
writes, for three tilings of dw[e] = x_e^T @ dy_e (x_e: the expert's rows x k, dy_e: rows x n):

  lone      a block per 128 x 256 tile, reading its x and dy slices (the wide kernel);
  pairs     two blocks of a cluster on a 256 x 256 tile, dy multicast (probes/grouped_pairs.patch; measured slower, part 12);
  resident  a block keeps a 256-column dy slice of the expert (rows x 256) in shared memory and
            streams x past it: dy is read once, x once per column block (rows <= 320 only; the
            kernel where the experts hold at most 256 rows on average, since part 12).

The wide (256-column) tiles are assumed throughout; MoE-small's down projection in fact runs
128-wide tiles (weight_grad_tile_width), which read more. Each projection's weight gradient is
listed: the SwiGLU up projection (k = d, n = 2 d_expert) and the down projection (k = d_expert,
n = d). With --seconds READ_TBPS WRITE_TBPS it also prints the time each would take if reads and
writes shared no resource (the longer of the two) and if they shared one (the sum), to set beside
the probes' measurements in experiments/perf/README.md. With --forward it lists instead the
operand bytes of the layer's four forward and input-gradient GEMMs (row tiles of 128 packed per
expert, the forward kernel's column tile: forward_tile_width in grouped_gemm_sm90.cu), beside what
pairs of 128-row tiles sharing the weights (256 rows a pair, 256-wide tiles only) would read. With
--routing uniform the experts' rows are drawn at random (each of the tokens x top_k slots to an
expert uniformly, seeded; a token's slots are not kept distinct) instead of split evenly: an expert
a few rows past a multiple of 128 takes a whole extra row tile, which reads all of its weight slice.
Usage: experiments/perf/wgrad_traffic_model.py [--seconds 5.0 2.6] [--forward [--routing uniform]]
"""
import argparse
import math
import random

TOKENS = 16384
# name: (d_model, experts, d_expert, top_k)
SHAPES = {
    "fine_grained": (1024, 64, 512, 6),
    "mixtral": (2048, 8, 5632, 2),
    "switch": (1024, 64, 4096, 1),
    "moe_small": (768, 64, 384, 6),
}
BM, BN, BF16, F32 = 128, 256, 2, 4


def operand_bytes(rows, k, n, tiling):
    """Bytes one expert's weight gradient reads: every tile reads rows x (its x columns + its dy columns)."""
    row_tiles, col_tiles = math.ceil(k / BM), math.ceil(n / BN)
    if tiling == "lone":
        return row_tiles * col_tiles * rows * (BM + BN) * BF16
    if tiling == "pairs":  # weight_grad_kernel pairs an even count of row tiles only
        if row_tiles % 2:
            return operand_bytes(rows, k, n, "lone")
        return row_tiles // 2 * col_tiles * rows * (2 * BM + BN) * BF16
    if tiling == "resident":
        return col_tiles * rows * (row_tiles * BM + BN) * BF16
    raise ValueError(tiling)


def forward_tile_width(n):
    if n >= 512 and n % 256 == 0:
        return 256
    if n >= 384 and n % 192 == 0:
        return 192
    return 128


def expert_rows(experts, top_k, routing, seed=1):
    """Rows per expert: split evenly, or each of the tokens x top_k slots sent to a random expert."""
    slots = TOKENS * top_k
    if routing == "balanced":
        return [slots // experts] * experts
    rng, counts = random.Random(seed), [0] * experts
    for _ in range(slots):
        counts[rng.randrange(experts)] += 1
    return counts


def print_forward(routing):
    """The forward GEMMs y = x_e @ w_e (k inner, n out) and the input gradients dx = dy_e @ w_e^T."""
    print(f"{'layer':<13}{'GEMM':<16}{'k':>6}{'n':>7}{'tile':>6}{'GB read':>9}{'pairs':>7}{'GB written':>11}"
          f"   ({routing} routing)")
    for name, (d, experts, d_expert, top_k) in SHAPES.items():
        counts = expert_rows(experts, top_k, routing)
        row_tiles = sum(math.ceil(r / BM) for r in counts)
        pair_tiles = sum(math.ceil(r / (2 * BM)) for r in counts)
        total, total_pairs = 0.0, 0.0
        for gemm, k, n in (("up", d, 2 * d_expert), ("down", d_expert, d), ("down dgrad", d, d_expert),
                           ("up dgrad", 2 * d_expert, d)):
            bn = forward_tile_width(n)
            read = row_tiles * math.ceil(n / bn) * k * (BM + bn) * BF16 / 1e9
            pairs = pair_tiles * math.ceil(n / bn) * k * (2 * BM + bn) * BF16 / 1e9 if bn == 256 else read
            written = sum(counts) * n * BF16 / 1e9
            total, total_pairs = total + read, total_pairs + pairs
            print(f"{name:<13}{gemm:<16}{k:>6}{n:>7}{bn:>6}{read:>9.2f}{pairs:>7.2f}{written:>11.2f}")
        print(f"{'':<13}{'all four':<16}{'':>19}{total:>9.2f}{total_pairs:>7.2f}"
              f"   row tiles {row_tiles} (balanced: {experts * math.ceil(TOKENS * top_k / experts / BM)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", nargs=2, type=float, metavar=("READ_TBPS", "WRITE_TBPS"))
    ap.add_argument("--forward", action="store_true")
    ap.add_argument("--routing", choices=("balanced", "uniform"), default="balanced")
    args = ap.parse_args()
    if args.forward:
        print_forward(args.routing)
        return
    print(f"{'layer':<13}{'projection':<11}{'rows/expert':>12}{'dw written':>12}"
          f"{'lone':>10}{'pairs':>10}{'resident':>10}  (GB read)")
    for name, (d, experts, d_expert, top_k) in SHAPES.items():
        rows = TOKENS * top_k // experts
        totals = {"written": 0.0, "lone": 0.0, "pairs": 0.0, "resident": 0.0}
        for projection, k, n in (("up", d, 2 * d_expert), ("down", d_expert, d)):
            written = experts * k * n * F32 / 1e9
            read = {t: experts * operand_bytes(rows, k, n, t) / 1e9 for t in ("lone", "pairs", "resident")}
            resident = f"{read['resident']:.2f}" if rows <= 320 else "-"
            print(f"{name:<13}{projection:<11}{rows:>12}{written:>12.2f}{read['lone']:>10.2f}"
                  f"{read['pairs']:>10.2f}{resident:>10}")
            totals["written"] += written
            for t in ("lone", "pairs", "resident"):
                totals[t] += read[t]
        if args.seconds:
            r, w = (x * 1e12 / 1e9 for x in args.seconds)  # GB/s
            for t in ("lone", "pairs") + (("resident",) if rows <= 320 else ()):
                overlap, shared = max(totals[t] / r, totals["written"] / w), totals[t] / r + totals["written"] / w
                print(f"{'':<13}{t:<11}reads {totals[t]:.2f} GB, writes {totals['written']:.2f} GB: "
                      f"{overlap * 1e3:.3f} ms overlapped, {shared * 1e3:.3f} ms in series")


if __name__ == "__main__":
    main()
