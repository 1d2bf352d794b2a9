// `moe bench layer`: an MoE layer alone at a config's shape against the dense GEMM chain of equal
// expert FLOPs, both timed with device events (median of the timed iterations after warm-up).
#include "src/tools/bench_layer.h"

#include <cmath>
#include <random>

#include "experts/moe_layer.h"
#include "routing/router_registry.h"
#include "src/config/moe_shape.h"
#include "src/model/model.h"
#include "src/nn/dense_ffn.h"
#include "src/nn/linear.h"
#include "src/ops/op_profile.h"
#include "src/tools/bench_timing.h"

namespace moe {

namespace {

double tflops(double flops, double ms) { return flops / (ms * 1e-3) / 1e12; }

}  // namespace

double expert_fwd_bwd_flops(int64_t rows, int64_t d_model, int64_t d_expert, bool gated) {
  const double up = static_cast<double>(gated ? 2 * d_expert : d_expert);
  const double forward = 2.0 * static_cast<double>(rows) * static_cast<double>(d_model) *
                         (up + static_cast<double>(d_expert));
  return 3.0 * forward;
}

nlohmann::json bench_layer(const Config& config, Device device, const LayerBenchOptions& o) {
  const ModelConfig& m = config.model;
  MOE_CHECK(config.moe.num_experts > 0, "moe bench layer: the config has no MoE layers (moe.num_experts = 0)");
  MOE_CHECK(o.tokens >= 1, "moe bench layer: --tokens must be positive, got ", o.tokens);
  const MoeShape shape = moe_shape(config.moe);
  const ops::Activation act =
      ops::activation_from_name(config.moe.activation.empty() ? m.activation : config.moe.activation);
  const double out_std = m.init_std / std::sqrt(2.0 * static_cast<double>(m.num_layers));
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;

  ParamStore store;
  MoeLayerConfig layer_config = moe_layer_config(m, config.moe, act, out_std);
  layer_config.shared_stream = config.parallel.shared_expert_stream;
  RouterSpec spec{m.d_model, m.vocab_size, shape.num_experts, shape.top_k, 0, m.init_std};
  MoeLayer layer(store, "moe", layer_config, make_router(store, "moe.router", config.moe, spec));
  // The dense chain: one FFN over as many rows as the experts process in all.
  const auto rows = static_cast<int64_t>(std::llround(static_cast<double>(o.tokens) *
                                                       layer.router().experts_per_token()));
  ParamStore dense_store;  // its own store: each side zeroes only its own gradients
  const ParamId w_up = dense_store.add("dense.w_up", {m.d_model, ffn_up_width(act, shape.d_expert)},
                                       ParamGroup::dense, ParamKind::weight, ParamInit::normal, m.init_std);
  const ParamId w_down = dense_store.add("dense.w_down", {shape.d_expert, m.d_model}, ParamGroup::dense,
                                         ParamKind::weight, ParamInit::normal, out_std);
  for (ParamStore* s : {&store, &dense_store}) {
    s->allocate(device, dtype);
    s->initialize(config.train.seed);
  }

  Tensor x = random_on({o.tokens, m.d_model}, dtype, device, 1, -1, 1);
  Tensor dy = random_on({o.tokens, m.d_model}, dtype, device, 2, -1, 1);
  std::vector<int32_t> tokens(static_cast<size_t>(o.tokens));
  std::mt19937 rng(3);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(m.vocab_size));
  RouteInputs inputs;
  inputs.tokens = &tokens;
  inputs.targets = &tokens;
  inputs.seq_len = std::min(m.seq_len, o.tokens);
  // Each iteration is a training step of one micro-batch: zero the gradients, forward, backward.
  auto layer_step = [&] {
    store.zero_grads();
    MoeLayerSaved saved;
    layer.forward(x, inputs, saved);
    layer.backward(saved, dy, 1.0f);
  };
  Tensor xd = random_on({rows, m.d_model}, dtype, device, 4, -1, 1);
  Tensor dyd = random_on({rows, m.d_model}, dtype, device, 5, -1, 1);
  Tensor dxd = empty_like(xd);
  auto dense_step = [&] {
    dense_store.zero_grads();
    FfnSaved saved;
    ffn_forward(xd, dense_store.param(w_up), dense_store.param(w_down), act, saved);
    Tensor dw_up = dense_store.grad(w_up), dw_down = dense_store.grad(w_down);
    ffn_backward(saved, dense_store.param(w_up), dense_store.param(w_down), act, dyd, dw_up, dw_down, dxd);
  };
  const double layer_ms = median_ms(device, o.warmup, o.iters, layer_step);
  const double dense_ms = median_ms(device, o.warmup, o.iters, dense_step);
  const double flops = expert_fwd_bwd_flops(rows, m.d_model, shape.d_expert, ops::is_gated(act));
  nlohmann::json r = {{"device", device.str()}, {"dtype", dtype_name(dtype)}, {"tokens", o.tokens},
                      {"d_model", m.d_model}, {"experts", shape.num_experts}, {"d_expert", shape.d_expert},
                      {"experts_per_token", layer.router().experts_per_token()}, {"router", config.moe.router},
                      {"shared_experts", shape.num_shared}, {"d_shared", shape.d_shared},
                      {"experts_impl", layer.experts().name()},
                      {"grouped_kernel", ops::grouped_matmul_kernel(device)}, {"iters", o.iters}, {"expert_flops", flops},
                      {"layer_ms", layer_ms}, {"expert_tflops", tflops(flops, layer_ms)}, {"dense_ms", dense_ms},
                      {"dense_tflops", tflops(flops, dense_ms)}, {"vs_dense", dense_ms / layer_ms}};
  if (o.breakdown) {
    ops::OpProfile profile;
    ops::set_op_profile(&profile);
    for (int64_t i = 0; i < o.iters; ++i) layer_step();
    ops::set_op_profile(nullptr);
    nlohmann::json kinds;
    for (const auto& [kind, ms] : profile.millis_by_kind()) kinds[kind] = ms / static_cast<double>(o.iters);
    r["ms_by_kind"] = kinds;
    nlohmann::json by_op;
    for (const auto& [op, ms] : profile.millis_by_op()) by_op[op] = ms / static_cast<double>(o.iters);
    r["ms_by_op"] = by_op;
    r["ops_per_iter"] = static_cast<double>(profile.ops()) / static_cast<double>(o.iters);
  }
  return r;
}

}  // namespace moe
