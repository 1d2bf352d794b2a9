// `moe bench layer CONFIG`: one MoE layer of a config (its [model] width and [moe] section:
// router, experts, granularity, shared experts), forward + backward on random tokens, timed on its
// device, and in the same process the dense GEMM chain of equal expert FLOPs (the ceiling).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/tensor/tensor.h"

namespace moe {

struct LayerBenchOptions {
  int64_t tokens = 16384;  // rows of the layer's input (the anchors' 16 x 1024)
  int64_t warmup = 3, iters = 10;
  bool breakdown = false;  // then time as many iterations again with every op timed by kind
  std::string grouped_kernel = "auto";  // the CUDA grouped matmul kernel (ops::set_grouped_matmul_kernel)
};

// Expert matmul FLOPs of one forward + backward: three times the forward's
// 2 * rows * d_model * (up width + d_expert), rows = tokens * experts per token.
double expert_fwd_bwd_flops(int64_t rows, int64_t d_model, int64_t d_expert, bool gated);

// One JSON object: the layer's shape, layer_ms (median fwd+bwd), expert_tflops (expert FLOPs over
// the whole layer's time: routing, permutation, shared experts included), the dense chain's ms and
// TFLOP/s, their ratio, and (breakdown) ms per op kind.
nlohmann::json bench_layer(const Config& config, Device device, const LayerBenchOptions& options);

}  // namespace moe
