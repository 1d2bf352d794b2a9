#!/usr/bin/env bash
# Makes the source trees that experiments/perf/ab_trees.sh compares with this checkout: for each
# PATCH (default: every *.patch beside this script), HEAD's build inputs (CMakeLists.txt and the
# source folders, nothing else, so that several trees travel to the GPU host within its size limit)
# under .ab/<patch name>, with the patch applied. Run here, in the repo root, then carry .ab.
# wgrad_no_store, wgrad_no_mma and wgrad_store_only are probes, not fixes: each removes one part
# of the Hopper weight gradient (its stores, its multiplies, or everything but its stores) so that
# the same launch timed in each tree shows where its time goes; wgrad_bf16_out writes bf16 values
# (half the bytes) over the f32 buffer, to time what bf16 weight gradients would buy. Their results
# are wrong by design.
# wgrad_streaming_stores is a candidate fix with correct results: the fragments leave by
# evict-first stores (st.global.cs), so the 3.2 GB of f32 written does not push the operands that
# the next tiles reuse out of L2. wgrad_two_blocks is another: every persistent weight gradient on
# 128-wide tiles, two blocks a multiprocessor with 3 stages each, so that one block's epilogue
# overlaps the other's multiplies (the block-per-tile kernel, which pairs blocks the same way, beat
# the wide tiles on the Switch-like shape on an H100); at two blocks ptxas caps it at 96 registers
# and it spills 44 bytes. forward_idle_half is a candidate for the forward and input-gradient
# kernels: in an expert's last row tile whose rows all fall in the first warpgroup's 64, the second
# warpgroup waits on and frees the ring's stages without multiplying (its rows are never stored), so
# the first has the tensor cores; with balanced top-1 over 64 experts (about 256 rows each) that is
# about 10% of the multiply work (2% at top-6). The branch encloses the whole k-loop: ptxas reports
# no C7519/C7520, no spills, registers as before. Candidates go into the kernel only if they
# measure faster, and after the cuda_grouped_gemm tests pass with them.
# grouped_pairs runs the persistent wide GEMMs as clusters of two blocks that multicast the operand
# slice they share (dy in the weight gradient, w[e] in the forward and input gradient); measured in
# part 12 twice as slow, traced in part 13 to cluster-scope fences on its stage releases, which it
# now makes with default-semantics arrivals (part 14: 1.08x on the Mixtral-like layer, a loss on
# the shapes with few rows an expert; not taken); MOE_PRINT_PAIRS=1 prints how many pairs
# its grid holds. grouped_pairs_no_multicast is the same clusters with every block loading its own
# operands (no multicast, no remote barrier arrivals): the probe that told placement from coupling.
# grouped_pairs_unclustered is no_multicast launched without clusters (a pair is blocks 2i, 2i + 1):
# it tells the pair schedule's tile order from the two blocks sharing a GPC.
# fused_activation writes the up projection's activation in its epilogue; measured in part 12, no
# gain, not taken. Both change the tests too: experiments/perf/candidates_call.sh applies patches to
# the checkout in turn, builds, tests and times them (no tree needed).
# WITH_TESTS=1 adds tests/ (about 3 MB more a tree), for a candidate whose tests run in its tree.
# Usage: [WITH_TESTS=1] experiments/perf/probes/make_trees.sh [PATCH...]
set -euo pipefail
here=$(dirname "$0")
patches=("$@")
((${#patches[@]} > 0)) || patches=("$here"/*.patch)
for p in "${patches[@]}"; do
  [[ -f $p ]] || { echo "make_trees.sh: no patch $p" >&2; exit 2; }
  name=$(basename "$p" .patch)
  rm -rf ".ab/$name" && mkdir -p ".ab/$name"
  git archive HEAD CMakeLists.txt src routing experts kernels parallel ${WITH_TESTS:+tests} | tar x -C ".ab/$name"
  git apply --directory=".ab/$name" "$p" || { echo "make_trees.sh: $p does not apply to HEAD" >&2; exit 1; }
  echo ".ab/$name"
done
