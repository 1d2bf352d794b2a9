// `moe bench op NAME`: one kernel at a given shape, timed on its device (CUDA events; median of
// the timed iterations after warm-up), reported as one JSON line with its TFLOP/s or GB/s.
// Ops register in bench_op.cpp: a name, what it times, and a function from the options to JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/tensor/tensor.h"
#include "src/tools/bench_timing.h"

namespace moe {

// Shape flags of all op benches (each op reads the ones it needs).
struct OpBenchOptions {
  int64_t batch = 4, seq_len = 4096, heads = 16, kv_heads = 0, head_dim = 64;  // kv_heads 0 = heads
  bool causal = true;
  int64_t doc_len = 0;  // attention: documents of doc_len tokens each (document masking); 0 = none
  int64_t width = 768;  // the model width of the add + norm benches (tokens = batch * seq)
  int64_t vocab = 50304;  // cross_entropy: logits per token
  // grouped_gemm: experts, rows per expert (a balanced split), d_model, d_expert (MoE-small's layer)
  int64_t experts = 64, tokens_per_expert = 1536, d_model = 768, d_expert = 384;
  double skew = 0;  // grouped_gemm: uneven experts (skewed_expert_rows); 0 = balanced
  int64_t top_k = 6;  // balance: slots per token (tokens = batch * seq, experts as above)
  int64_t warmup = 5, iters = 20;
  uint64_t seed = 1;
};

struct OpBench {
  std::string name;
  std::string what;
  nlohmann::json (*run)(const OpBenchOptions& options, Device device);
};

// Every op `moe bench op` knows, in the order the help lists them.
const std::vector<OpBench>& op_benches();

// Runs the named op bench (an unknown name is an error listing the known ones).
nlohmann::json bench_op(const std::string& name, const OpBenchOptions& options, Device device);

// Attention FLOPs counted the FlashAttention way (also used by experiments/perf/anchors/
// attention_anchor.py): forward 4 B Hq S^2 hd (two GEMMs of 2 B Hq S^2 hd), halved when causal;
// backward 2.5 x forward (five GEMMs of that size).
double attention_forward_flops(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, bool causal);

// Rows of each of `experts` experts, experts x tokens_per_expert in all: expert e's share goes as
// exp(skew (e / (E - 1) - 1/2)), the running ends rounded (counts >= 0, non-decreasing up to
// rounding); skew 0 is balanced, skew 2 gives the last expert e^2 = 7.4 times the first's rows.
std::vector<int64_t> skewed_expert_rows(int64_t experts, int64_t tokens_per_expert, double skew);

// Grouped GEMM FLOPs of one expert FFN pass: two GEMMs of 2 * rows * d_model * d_expert forward
// (up, down), four backward (two input gradients, two weight gradients).
double grouped_ffn_forward_flops(int64_t rows, int64_t d_model, int64_t d_expert);


}  // namespace moe
