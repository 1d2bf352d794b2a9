// `moe bench op`: the registry of single-op benchmarks: attention (the flash kernels), rotary
// embedding, the LM head's cross-entropy, the fused residual add + norm, the grouped GEMM (the experts' GEMMs), a dense layer's
// GEMMs, the balancing terms, the dispatch's permutation, the router with its Switch statistics.
#include "src/tools/bench_op.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <utility>

#include "src/ops/ops.h"
#include "src/tools/bench_timing.h"
#include "src/train/metrics.h"

namespace moe {

namespace {

// The copy ceiling memory-bound ops are quoted against (H200, measured: 4.3 TB/s).
constexpr double k_h200_copy_bytes_per_s = 4.3e12;

// Times forward, backward and both (median ms) and writes them, their TFLOP/s and the fraction
// of the H200 peak into r; flops counts forward and backward once each.
template <class Fwd, class Bwd>
void time_fwd_bwd(const OpBenchOptions& o, Device device, Fwd&& forward, Bwd&& backward, double fwd_flops,
                  double bwd_flops, nlohmann::json& r) {
  const double fwd_ms = median_ms(device, o.warmup, o.iters, forward);
  const double bwd_ms = median_ms(device, o.warmup, o.iters, backward);  // reads what the forward runs left
  const double fwd_bwd_ms = median_ms(device, o.warmup, o.iters, [&] {
    forward();
    backward();
  });
  auto tflops = [](double flops, double ms) { return flops / (ms * 1e-3) / 1e12; };
  r["iters"] = o.iters;
  r["fwd_ms"] = fwd_ms;
  r["bwd_ms"] = bwd_ms;
  r["fwd_bwd_ms"] = fwd_bwd_ms;
  r["fwd_tflops"] = tflops(fwd_flops, fwd_ms);
  r["bwd_tflops"] = tflops(bwd_flops, bwd_ms);
  r["fwd_bwd_tflops"] = tflops(fwd_flops + bwd_flops, fwd_bwd_ms);
  r["fwd_bwd_fraction_of_peak"] = tflops(fwd_flops + bwd_flops, fwd_bwd_ms) * 1e12 / k_h200_peak_flops;
}

nlohmann::json bench_attention(const OpBenchOptions& o, Device device) {
  const int64_t kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.heads > 0 && o.head_dim > 0 && o.heads % kv_heads == 0,
            "bench op attention: --batch, --seq, --heads, --head-dim must be positive and --heads a multiple of "
            "--kv-heads (got batch ",
            o.batch, ", seq ", o.seq_len, ", heads ", o.heads, "/", kv_heads, ", head dim ", o.head_dim, ")");
  const ops::AttentionShape shape{o.batch, o.seq_len, o.heads, kv_heads, o.head_dim, o.causal};
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;
  const int64_t tokens = o.batch * o.seq_len;
  const Shape q_shape{tokens, o.heads * o.head_dim}, kv_shape{tokens, kv_heads * o.head_dim};
  Tensor q = random_on(q_shape, dtype, device, o.seed, -2.0f, 2.0f);
  Tensor k = random_on(kv_shape, dtype, device, o.seed + 1, -2.0f, 2.0f);
  Tensor v = random_on(kv_shape, dtype, device, o.seed + 2, -1.0f, 1.0f);
  Tensor dout = random_on(q_shape, dtype, device, o.seed + 3, -1.0f, 1.0f);
  Tensor out = Tensor::empty(q_shape, dtype, device);
  Tensor lse = Tensor::empty({o.batch, o.heads, o.seq_len}, ops::accum_dtype(dtype), device);
  Tensor dq = Tensor::empty(q_shape, dtype, device), dk = Tensor::empty(kv_shape, dtype, device);
  Tensor dv = Tensor::empty(kv_shape, dtype, device);
  const int64_t workspace_numel = ops::attention_workspace_numel(shape, device);
  const Tensor workspace = workspace_numel > 0 ? Tensor::empty({workspace_numel}, DType::f32, device) : Tensor();
  MOE_CHECK(o.doc_len >= 0 && (o.doc_len == 0 || o.causal), "bench op attention: --doc-len ", o.doc_len,
            " must be >= 0, and documents need the causal mask");
  Tensor doc_starts;  // documents of doc_len tokens: token i of a sequence starts at i - i % doc_len
  if (o.doc_len > 0) {
    std::vector<int32_t> starts(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      starts[static_cast<size_t>(t)] = static_cast<int32_t>(t % o.seq_len / o.doc_len * o.doc_len);
    }
    doc_starts = Tensor::from_vector(starts, {tokens}, DType::i32, device);
  }
  auto forward = [&] { ops::attention_forward(q, k, v, out, lse, shape, doc_starts); };
  auto backward = [&] { ops::attention_backward(q, k, v, out, lse, dout, dq, dk, dv, shape, workspace, doc_starts); };

  const double fwd_flops = attention_forward_flops(o.batch, o.seq_len, o.heads, o.head_dim, o.causal);
  nlohmann::json r;
  r["op"] = "attention";
  r["device"] = device.str();
  r["batch"] = o.batch;
  r["seq"] = o.seq_len;
  r["heads"] = o.heads;
  r["kv_heads"] = kv_heads;
  r["head_dim"] = o.head_dim;
  r["causal"] = o.causal;
  r["doc_len"] = o.doc_len;
  time_fwd_bwd(o, device, forward, backward, fwd_flops, 2.5 * fwd_flops, r);
  r["flops"] = "fwd 4*B*H*S^2*D (/2 causal), bwd 2.5x fwd; peak 775 TFLOP/s (measured bf16 GEMM, H200)";
  if (o.doc_len > 0) {
    r["flops"] = r["flops"].get<std::string>() + "; with --doc-len the same count (blocks skipped show as speed)";
  }
  return r;
}

// Rotary embedding as the attention applies it: q [B*S, heads*hd] and k [B*S, kv_heads*hd]
// rotated in place, forward then inverse (the backward), in GB/s of their traffic (each tensor
// read and written once per rotation) against the device's copy peak.
nlohmann::json bench_rope(const OpBenchOptions& o, Device device) {
  const int64_t kv_heads = o.kv_heads > 0 ? o.kv_heads : o.heads;
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.heads > 0 && kv_heads > 0 && o.head_dim > 0 && o.head_dim % 2 == 0,
            "bench op rope: --batch, --seq, --heads, --kv-heads must be positive and --head-dim positive and even ",
            "(got batch ", o.batch, ", seq ", o.seq_len, ", heads ", o.heads, "/", kv_heads, ", head dim ", o.head_dim,
            ")");
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;
  const int64_t tokens = o.batch * o.seq_len;
  Tensor q = random_on({tokens, o.heads * o.head_dim}, dtype, device, o.seed, -2.0f, 2.0f);
  Tensor k = random_on({tokens, kv_heads * o.head_dim}, dtype, device, o.seed + 1, -2.0f, 2.0f);
  auto rotate = [&](bool inverse) {
    ops::rope(q, o.heads, o.seq_len, 10000.0f, inverse);
    ops::rope(k, kv_heads, o.seq_len, 10000.0f, inverse);
  };
  const double fwd_ms = median_ms(device, o.warmup, o.iters, [&] { rotate(false); });
  const double bwd_ms = median_ms(device, o.warmup, o.iters, [&] { rotate(true); });
  const double bytes = 2.0 * static_cast<double>(q.numel() + k.numel()) * static_cast<double>(dtype_size(dtype));
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  nlohmann::json r{{"op", "rope"}, {"device", device.str()}, {"tokens", tokens}, {"heads", o.heads},
                   {"kv_heads", kv_heads}, {"head_dim", o.head_dim}, {"iters", o.iters}, {"fwd_ms", fwd_ms},
                   {"bwd_ms", bwd_ms}, {"fwd_gbps", gbps(fwd_ms)}, {"bwd_gbps", gbps(bwd_ms)},
                   {"fwd_fraction_of_copy_peak", gbps(fwd_ms) * 1e9 / k_h200_copy_bytes_per_s},
                   {"bytes", "q and k each read and written once; copy peak 4.3 TB/s (measured, H200)"}};
  return r;
}

// The LM head's cross-entropy at [B*S, vocab]: forward then backward in place (two ops) against
// both at once (cross_entropy_with_grad), in GB/s of the one-op traffic (the logits read once and
// the gradient written once) against the device's copy peak.
nlohmann::json bench_cross_entropy(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.vocab > 0, "bench op cross_entropy: --batch, --seq and --vocab must ",
            "be positive (got batch ", o.batch, ", seq ", o.seq_len, ", vocab ", o.vocab, ")");
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32, stat = ops::accum_dtype(dtype);
  const int64_t tokens = o.batch * o.seq_len;
  const Tensor logits = random_on({tokens, o.vocab}, dtype, device, o.seed, -8.0f, 8.0f);
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  std::mt19937_64 rng(o.seed + 1);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(o.vocab));
  const Tensor targets = Tensor::from_vector(ids, {tokens}, DType::i32, device);
  Tensor work = logits.clone(), loss = Tensor::empty({tokens}, stat, device), lse = Tensor::empty({tokens}, stat, device);
  const float scale = 1.0f / static_cast<float>(tokens);
  // Each timed call starts from the logits (the gradient overwrites them in place).
  const double copy_ms = median_ms(device, o.warmup, o.iters, [&] { work.copy_from(logits); });
  const double two_ops_ms = median_ms(device, o.warmup, o.iters, [&] {
    work.copy_from(logits);
    ops::cross_entropy_forward(work, targets, loss, lse);
    ops::cross_entropy_backward(work, targets, lse, scale, work);
  }) - copy_ms;
  const double with_grad_ms = median_ms(device, o.warmup, o.iters, [&] {
    work.copy_from(logits);
    ops::cross_entropy_with_grad(work, targets, loss, lse, scale, work);
  }) - copy_ms;
  const double bytes = 2.0 * static_cast<double>(logits.numel()) * static_cast<double>(dtype_size(dtype));
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  return nlohmann::json{{"op", "cross_entropy"}, {"device", device.str()}, {"tokens", tokens}, {"vocab", o.vocab},
                        {"iters", o.iters}, {"two_ops_ms", two_ops_ms}, {"with_grad_ms", with_grad_ms},
                        {"two_ops_gbps", gbps(two_ops_ms)}, {"with_grad_gbps", gbps(with_grad_ms)},
                        {"with_grad_fraction_of_copy_peak", gbps(with_grad_ms) * 1e9 / k_h200_copy_bytes_per_s},
                        {"bytes", "the logits read and the gradient written once (each timed call less a copy that "
                                  "restores the logits); copy peak 4.3 TB/s (measured, H200)"}};
}

// The fused residual add + norm at [B*S, width]: forward (h = x + delta, y = norm(h)) and backward
// (dx = norm backward + dresidual), each against the unfused ops it replaces, in GB/s of the
// fused op's own traffic (4 activation-sized tensors each way) against the device's copy peak.
nlohmann::json bench_add_norm(const OpBenchOptions& o, Device device, bool layernorm) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.width > 0, "bench op add_norm: --batch, --seq and --width must be ",
            "positive (got batch ", o.batch, ", seq ", o.seq_len, ", width ", o.width, ")");
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32, stat = ops::accum_dtype(dtype);
  const int64_t tokens = o.batch * o.seq_len;
  const Shape act{tokens, o.width};
  Tensor x = random_on(act, dtype, device, o.seed, -2.0f, 2.0f);
  Tensor delta = random_on(act, dtype, device, o.seed + 1, -1.0f, 1.0f);
  Tensor dy = random_on(act, dtype, device, o.seed + 2, -1.0f, 1.0f);
  Tensor dres = random_on(act, dtype, device, o.seed + 3, -1.0f, 1.0f);
  Tensor w = random_on({o.width}, dtype, device, o.seed + 4, 0.5f, 1.5f);
  Tensor b = random_on({o.width}, dtype, device, o.seed + 5, -0.5f, 0.5f);
  Tensor h = Tensor::empty(act, dtype, device), y = Tensor::empty(act, dtype, device);
  Tensor dx = Tensor::empty(act, dtype, device);
  Tensor mean = Tensor::empty({tokens}, stat, device), rstd = Tensor::empty({tokens}, stat, device);
  Tensor dw = Tensor::zeros({o.width}, stat, device), db = Tensor::zeros({o.width}, stat, device);
  auto norm = [&](const Tensor& in) {
    if (layernorm) {
      ops::layernorm_forward(in, w, b, y, mean, rstd, 1e-5f);
    } else {
      ops::rmsnorm_forward(in, w, y, rstd, 1e-5f);
    }
  };
  auto fused_fwd = [&] {
    if (layernorm) {
      ops::add_layernorm_forward(x, delta, w, b, h, y, mean, rstd, 1e-5f);
    } else {
      ops::add_rmsnorm_forward(x, delta, w, h, y, rstd, 1e-5f);
    }
  };
  auto backward = [&](const Tensor& dresidual) {
    if (layernorm) {
      ops::layernorm_backward(h, w, mean, rstd, dy, dx, dw, db, dresidual);
    } else {
      ops::rmsnorm_backward(h, w, rstd, dy, dx, dw, dresidual);
    }
  };
  const double fwd_ms = median_ms(device, o.warmup, o.iters, fused_fwd);
  const double unfused_fwd_ms = median_ms(device, o.warmup, o.iters, [&] {
    ops::add(x, delta, h);
    norm(h);
  });
  const double bwd_ms = median_ms(device, o.warmup, o.iters, [&] { backward(dres); });
  const double unfused_bwd_ms = median_ms(device, o.warmup, o.iters, [&] {
    backward(Tensor());
    ops::accumulate(dx, dres);
  });
  const double act_bytes = static_cast<double>(tokens * o.width) * static_cast<double>(dtype_size(dtype));
  const double bytes = 4 * act_bytes;  // forward: x, delta in, h, y out; backward: h, dy, dres in, dx out
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  nlohmann::json r;
  r["op"] = layernorm ? "add_layernorm" : "add_rmsnorm";
  r["device"] = device.str();
  r["tokens"] = tokens;
  r["width"] = o.width;
  r["iters"] = o.iters;
  r["fwd_ms"] = fwd_ms;
  r["unfused_fwd_ms"] = unfused_fwd_ms;
  r["bwd_ms"] = bwd_ms;
  r["unfused_bwd_ms"] = unfused_bwd_ms;
  r["fwd_gbps"] = gbps(fwd_ms);
  r["bwd_gbps"] = gbps(bwd_ms);
  r["fwd_fraction_of_copy_peak"] = gbps(fwd_ms) * 1e9 / k_h200_copy_bytes_per_s;
  r["bwd_fraction_of_copy_peak"] = gbps(bwd_ms) * 1e9 / k_h200_copy_bytes_per_s;
  r["bytes"] = "4 x tokens x width x element size each way (the backward's weight-gradient reduction re-reads "
               "h and dy on top); copy peak 4.3 TB/s (measured, H200)";
  return r;
}

nlohmann::json bench_add_rmsnorm(const OpBenchOptions& o, Device device) { return bench_add_norm(o, device, false); }
nlohmann::json bench_add_layernorm(const OpBenchOptions& o, Device device) { return bench_add_norm(o, device, true); }

}  // namespace

std::vector<int64_t> skewed_expert_rows(int64_t experts, int64_t tokens_per_expert, double skew) {
  MOE_CHECK(experts > 0 && tokens_per_expert > 0 && skew >= 0, "skewed expert rows: experts (", experts,
            ") and rows per expert (", tokens_per_expert, ") must be positive and the skew (", skew, ") >= 0");
  const int64_t total = experts * tokens_per_expert;
  std::vector<double> upto(static_cast<size_t>(experts) + 1, 0.0);  // cumulative weights
  for (int64_t e = 0; e < experts; ++e) {
    const double at = experts > 1 ? static_cast<double>(e) / static_cast<double>(experts - 1) - 0.5 : 0.0;
    upto[static_cast<size_t>(e) + 1] = upto[static_cast<size_t>(e)] + std::exp(skew * at);
  }
  // Rounding the running ends (not each share) keeps every count >= 0 and the total exact.
  std::vector<int64_t> rows(static_cast<size_t>(experts));
  int64_t end = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t next = std::llround(static_cast<double>(total) * upto[static_cast<size_t>(e) + 1] / upto.back());
    rows[static_cast<size_t>(e)] = next - end;
    end = next;
  }
  return rows;
}

namespace {

// The experts' GEMM chain without the activation: h = x @ w_up[e], y = h @ w_down[e] forward; the
// two input gradients and two weight gradients backward; one grouped launch each. The two weight
// gradients are also timed alone (their tiles' cost follows their expert's rows, so --skew shows
// how the schedule copes with uneven experts).
nlohmann::json bench_grouped_gemm(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.experts > 0 && o.tokens_per_expert > 0 && o.d_model > 0 && o.d_expert > 0,
            "bench op grouped_gemm: --experts, --tokens-per-expert, --d-model, --d-expert must be positive (got ",
            o.experts, ", ", o.tokens_per_expert, ", ", o.d_model, ", ", o.d_expert, ")");
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;
  const int64_t rows = o.experts * o.tokens_per_expert, d = o.d_model, f = o.d_expert;
  const std::vector<int64_t> counts = skewed_expert_rows(o.experts, o.tokens_per_expert, o.skew);
  std::vector<int32_t> ends(static_cast<size_t>(o.experts + 1), 0);
  for (int64_t e = 0; e < o.experts; ++e) {
    const auto i = static_cast<size_t>(e);
    ends[i + 1] = ends[i] + static_cast<int32_t>(counts[i]);
  }
  Tensor offsets = Tensor::from_vector(ends, {o.experts + 1}, DType::i32, device);
  Tensor x = random_on({rows, d}, dtype, device, o.seed, -1.0f, 1.0f);
  Tensor w_up = random_on({o.experts, d, f}, dtype, device, o.seed + 1, -0.05f, 0.05f);
  Tensor w_down = random_on({o.experts, f, d}, dtype, device, o.seed + 2, -0.05f, 0.05f);
  Tensor dy = random_on({rows, d}, dtype, device, o.seed + 3, -1.0f, 1.0f);
  Tensor h = Tensor::empty({rows, f}, dtype, device), y = Tensor::empty({rows, d}, dtype, device);
  Tensor dh = Tensor::empty({rows, f}, dtype, device), dx = Tensor::empty({rows, d}, dtype, device);
  Tensor dw_up = Tensor::zeros(w_up.shape(), ops::accum_dtype(dtype), device);
  Tensor dw_down = Tensor::zeros(w_down.shape(), ops::accum_dtype(dtype), device);
  auto forward = [&] {
    ops::grouped_matmul(x, offsets, w_up, false, h);
    ops::grouped_matmul(h, offsets, w_down, false, y);
  };
  auto backward = [&] {
    ops::grouped_matmul(dy, offsets, w_down, true, dh);
    ops::grouped_matmul_weight_grad(h, offsets, dy, dw_down);
    ops::grouped_matmul(dh, offsets, w_up, true, dx);
    ops::grouped_matmul_weight_grad(x, offsets, dh, dw_up);
  };
  const double fwd_flops = grouped_ffn_forward_flops(rows, d, f);
  nlohmann::json r;
  r["op"] = "grouped_gemm";
  r["device"] = device.str();
  r["experts"] = o.experts;
  r["tokens_per_expert"] = o.tokens_per_expert;
  r["skew"] = o.skew;
  r["largest_expert_rows"] = *std::max_element(counts.begin(), counts.end());
  r["rows"] = rows;
  r["d_model"] = d;
  r["d_expert"] = f;
  time_fwd_bwd(o, device, forward, backward, fwd_flops, 2 * fwd_flops, r);
  const double wgrad_ms = median_ms(device, o.warmup, o.iters, [&] {
    ops::grouped_matmul_weight_grad(h, offsets, dy, dw_down);
    ops::grouped_matmul_weight_grad(x, offsets, dh, dw_up);
  });
  r["wgrad_ms"] = wgrad_ms;
  r["wgrad_tflops"] = fwd_flops / (wgrad_ms * 1e-3) / 1e12;  // the two weight gradients: the forward's FLOPs
  r["flops"] = "fwd 2 GEMMs of 2*rows*d*f, bwd 4; peak 775 TFLOP/s (measured bf16 GEMM, H200)";
  return r;
}

// A dense linear layer's three GEMMs at tokens = batch * seq, in = --d-model, out = --d-expert, each
// timed alone as the layer runs it (src/nn/linear.cpp): y = x w, dx = dy w^T, and dw += x^T dy into
// the fp32 gradient. The weight gradient is the long-k one (k = tokens, a small output).
nlohmann::json bench_dense_gemm(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.d_model > 0 && o.d_expert > 0,
            "bench op dense_gemm: --batch, --seq, --d-model, --d-expert must be positive (got ", o.batch, ", ",
            o.seq_len, ", ", o.d_model, ", ", o.d_expert, ")");
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;
  const int64_t tokens = o.batch * o.seq_len, in = o.d_model, out = o.d_expert;
  Tensor x = random_on({tokens, in}, dtype, device, o.seed, -1.0f, 1.0f);
  Tensor w = random_on({in, out}, dtype, device, o.seed + 1, -0.05f, 0.05f);
  Tensor dy = random_on({tokens, out}, dtype, device, o.seed + 2, -1.0f, 1.0f);
  Tensor y = Tensor::empty({tokens, out}, dtype, device), dx = Tensor::empty({tokens, in}, dtype, device);
  Tensor dw = Tensor::zeros({in, out}, ops::accum_dtype(dtype), device);
  const double flops = 2.0 * static_cast<double>(tokens) * static_cast<double>(in) * static_cast<double>(out);
  nlohmann::json r{{"op", "dense_gemm"}, {"device", device.str()}, {"tokens", tokens}, {"in", in}, {"out", out},
                   {"iters", o.iters}};
  auto time = [&](const char* name, auto&& run) {
    const double ms = median_ms(device, o.warmup, o.iters, run);
    r[std::string(name) + "_ms"] = ms;
    r[std::string(name) + "_tflops"] = flops / (ms * 1e-3) / 1e12;
  };
  time("forward", [&] { ops::matmul(x, false, w, false, y); });
  time("input_grad", [&] { ops::matmul(dy, false, w, true, dx); });
  time("weight_grad", [&] { ops::matmul(x, true, dy, false, dw, 1.0f, 1.0f); });
  return r;
}

// The fields every routing bench reports first: the op, the device and the routing's shape.
nlohmann::json routing_result(const char* op, Device device, int64_t tokens, int64_t experts, int64_t top_k,
                              int64_t iters) {
  return {{"op", op}, {"device", device.str()}, {"tokens", tokens}, {"experts", experts}, {"top_k", top_k},
          {"iters", iters}};
}

// Each balancing term's op (value and gradients; Switch and device-level with their column sums)
// at T = batch x seq tokens over E experts with k slots of random routing, the sequence-level
// term per sequence of --seq tokens; median ms per term against a copy of one [T,E] f32 tensor
// at the H200's copy peak (the floor of a term that reads the scores once).
nlohmann::json bench_balance(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.top_k > 0 && o.top_k < o.experts, "bench op balance: --batch, --seq ",
            "and --top-k must be positive and --top-k below --experts (got batch ", o.batch, ", seq ", o.seq_len,
            ", top-k ", o.top_k, ", experts ", o.experts, ")");
  const int64_t tokens = o.batch * o.seq_len, E = o.experts, k = o.top_k;
  const Shape te{tokens, E}, tk{tokens, k};
  Tensor scores = random_on(te, DType::f32, device, o.seed, 0.01f, 1.0f);
  Tensor logits = random_on(te, DType::f32, device, o.seed + 1, -3.0f, 3.0f);
  Tensor raw = random_on(te, DType::f32, device, o.seed + 2, -1.0f, 1.0f);
  Tensor normal = random_on(te, DType::f32, device, o.seed + 3, -1.5f, 1.5f);
  Tensor weights = random_on(tk, DType::f32, device, o.seed + 4, 0.05f, 1.0f);
  std::mt19937_64 rng(o.seed + 5);
  std::vector<int32_t> id_values(static_cast<size_t>(tokens * k));
  for (int32_t& id : id_values) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
  const Tensor ids = Tensor::from_vector(id_values, tk, DType::i32, device);
  Tensor d1 = Tensor::zeros(te, DType::f32, device), d2 = Tensor::zeros(te, DType::f32, device);
  Tensor dweights = Tensor::zeros(tk, DType::f32, device), value = Tensor::zeros({1}, DType::f64, device);
  Tensor sums = Tensor::empty({E}, DType::f32, device), row = Tensor::empty({E}, DType::f32, device);
  const int64_t groups = E % 8 == 0 ? 8 : 1;
  const std::vector<std::pair<const char*, std::function<void()>>> terms = {
      {"switch",
       [&] {
         ops::column_sum(scores, sums);
         ops::switch_balance(sums, ids, 0.01, value, row);
       }},
      {"device",
       [&] {
         ops::column_sum(scores, sums);
         ops::device_balance(sums, ids, groups, 0.01, value, row);
       }},
      {"importance", [&] { ops::importance_balance(weights, ids, E, 0.01, value, dweights); }},
      {"load", [&] { ops::load_balance(logits, raw, normal, k, 0.01, value, d1, d2); }},
      {"z", [&] { ops::z_balance(logits, 0.001, value, d1); }},
      {"seq", [&] { ops::seq_balance(scores, ids, o.seq_len, 0.01, value, d1); }},
  };
  nlohmann::json r = routing_result("balance", device, tokens, E, k, o.iters);
  r["seq"] = o.seq_len;
  for (const auto& [name, run] : terms) r[std::string(name) + "_ms"] = median_ms(device, o.warmup, o.iters, run);
  r["te_copy_floor_ms"] = 2.0 * static_cast<double>(tokens * E) * 4.0 / k_h200_copy_bytes_per_s * 1e3;
  return r;
}

// The dispatch's permutation at T = batch x seq tokens, each sent to top_k of E experts (random
// ids, dropless) with rows of d_model: the fused sort and row move against the sort then the
// gather it replaces, in GB/s of the rows' traffic (T*k rows read and written) against the copy
// peak (the sort's own traffic, ids and indices, is left out: it is d_model times smaller).
nlohmann::json bench_permute(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.top_k > 0 && o.top_k <= o.experts && o.d_model > 0,
            "bench op permute: --batch, --seq, --top-k and --d-model must be positive and --top-k at most --experts "
            "(got batch ",
            o.batch, ", seq ", o.seq_len, ", top-k ", o.top_k, ", experts ", o.experts, ", d-model ", o.d_model, ")");
  const int64_t tokens = o.batch * o.seq_len, slots = tokens * o.top_k, E = o.experts;
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;
  std::mt19937_64 rng(o.seed);
  std::vector<int32_t> id_values(static_cast<size_t>(slots));
  for (int32_t& id : id_values) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(E));
  const Tensor ids = Tensor::from_vector(id_values, {tokens, o.top_k}, DType::i32, device);
  const Tensor x = random_on({tokens, o.d_model}, dtype, device, o.seed + 1, -1.0f, 1.0f);
  Tensor sorted_tokens = Tensor::empty({slots}, DType::i32, device);
  Tensor slot_pos = Tensor::empty({slots}, DType::i32, device);
  Tensor offsets = Tensor::empty({E + 1}, DType::i32, device);
  Tensor x_sorted = Tensor::empty({slots, o.d_model}, dtype, device);
  const double fused_ms = median_ms(device, o.warmup, o.iters, [&] {
    ops::moe_permute_rows(ids, x, E, sorted_tokens, slot_pos, offsets, x_sorted);
  });
  const double unfused_ms = median_ms(device, o.warmup, o.iters, [&] {
    ops::moe_sort_by_expert(ids, E, sorted_tokens, slot_pos, offsets);
    ops::gather_rows(x, sorted_tokens, x_sorted);
  });
  const double bytes = 2.0 * static_cast<double>(slots * o.d_model) * static_cast<double>(dtype_size(dtype));
  auto gbps = [&](double ms) { return bytes / (ms * 1e-3) / 1e9; };
  nlohmann::json r = routing_result("permute", device, tokens, E, o.top_k, o.iters);
  r["d_model"] = o.d_model;
  r["fused_ms"] = fused_ms;
  r["unfused_ms"] = unfused_ms;
  r["fused_gbps"] = gbps(fused_ms);
  r["unfused_gbps"] = gbps(unfused_ms);
  r["fused_fraction_of_copy_peak"] = gbps(fused_ms) * 1e9 / k_h200_copy_bytes_per_s;
  r["bytes"] = "2 x tokens x top_k x d_model x element size (rows read and written); copy peak 4.3 TB/s (measured, "
               "H200)";
  return r;
}

// The top-k router's forward with the Switch term, forward and backward, at T = batch x seq
// tokens over E experts with k slots (softmax scores, random logits): fused, the router's pass
// also making the score sums and counts and the backward taking the term's gradient row; against
// unfused, a column sum of the scores and a count of the ids after the router, and the row spread
// over a [T,E] score gradient before the backward. Median ms of each.
nlohmann::json bench_router(const OpBenchOptions& o, Device device) {
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.top_k > 0 && o.top_k <= o.experts, "bench op router: --batch, --seq ",
            "and --top-k must be positive and --top-k at most --experts (got batch ", o.batch, ", seq ", o.seq_len,
            ", top-k ", o.top_k, ", experts ", o.experts, ")");
  const int64_t tokens = o.batch * o.seq_len, E = o.experts, k = o.top_k;
  const DType accum = DType::f32;
  const Tensor logits = random_on({tokens, E}, accum, device, o.seed, -3.0f, 3.0f);
  const Tensor dweights = random_on({tokens, k}, accum, device, o.seed + 1, -1.0f, 1.0f);
  Tensor scores = Tensor::empty({tokens, E}, accum, device), weights = Tensor::empty({tokens, k}, accum, device);
  Tensor ids = Tensor::empty({tokens, k}, DType::i32, device), dlogits = Tensor::empty({tokens, E}, accum, device);
  Tensor sums = Tensor::empty({E}, accum, device), counts = Tensor::empty({E}, DType::i64, device);
  Tensor value = Tensor::zeros({1}, DType::f64, device), row = Tensor::empty({E}, accum, device);
  ops::TopKOptions options;
  options.k = k;
  auto fused = [&] {
    ops::router_topk_forward(logits, Tensor(), options, scores, ids, weights, sums, counts);
    ops::switch_balance_from_counts(sums, counts, tokens, k, 0.01, value, row);
    ops::router_topk_backward(logits, scores, ids, weights, dweights, Tensor(), row, options, dlogits);
  };
  const Tensor every_row_is_row_0 = Tensor::zeros({tokens}, DType::i32, device);
  Tensor dscores = Tensor::empty({tokens, E}, accum, device);
  auto unfused = [&] {
    ops::router_topk_forward(logits, Tensor(), options, scores, ids, weights);
    ops::column_sum(scores, sums);
    ops::switch_balance(sums, ids, 0.01, value, row);
    ops::gather_rows(row.view({1, E}), every_row_is_row_0, dscores);
    ops::router_topk_backward(logits, scores, ids, weights, dweights, dscores, options, dlogits);
  };
  nlohmann::json r = routing_result("router", device, tokens, E, k, o.iters);
  r["fused_ms"] = median_ms(device, o.warmup, o.iters, fused);
  r["unfused_ms"] = median_ms(device, o.warmup, o.iters, unfused);
  r["te_copy_floor_ms"] = 2.0 * static_cast<double>(tokens * E) * 4.0 / k_h200_copy_bytes_per_s * 1e3;
  return r;
}

}  // namespace

double grouped_ffn_forward_flops(int64_t rows, int64_t d_model, int64_t d_expert) {
  return 4.0 * static_cast<double>(rows) * static_cast<double>(d_model) * static_cast<double>(d_expert);
}

double attention_forward_flops(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, bool causal) {
  const double full = 4.0 * static_cast<double>(batch) * static_cast<double>(heads) * static_cast<double>(seq_len) *
                      static_cast<double>(seq_len) * static_cast<double>(head_dim);
  return causal ? full / 2 : full;
}

double median_of(std::vector<double> values) {
  MOE_CHECK(!values.empty(), "median of no values");
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

const std::vector<OpBench>& op_benches() {
  static const std::vector<OpBench> benches = {
      {"attention", "attention forward, backward and both (--batch --seq --heads --kv-heads --head-dim --causal)",
       &bench_attention},
      {"rope", "rotary embedding of q and k, forward and inverse (--batch --seq --heads --kv-heads --head-dim)",
       &bench_rope},
      {"cross_entropy", "the LM head's cross-entropy, forward then backward against both at once (--batch --seq "
                        "--vocab)",
       &bench_cross_entropy},
      {"add_rmsnorm", "residual add + RMSNorm forward, backward with the residual gradient (--batch --seq --width)",
       &bench_add_rmsnorm},
      {"add_layernorm", "residual add + LayerNorm forward, backward with the residual gradient (--batch --seq --width)",
       &bench_add_layernorm},
      {"grouped_gemm", "the experts' grouped GEMMs, forward, backward, both and the weight gradients alone "
                       "(--experts --tokens-per-expert --skew --d-model --d-expert)",
       &bench_grouped_gemm},
      {"dense_gemm", "a dense linear layer's forward, input gradient and fp32 weight gradient GEMMs (--batch --seq "
                     "--d-model in, --d-expert out)",
       &bench_dense_gemm},
      {"balance", "each balancing term's value and gradients (--batch --seq --experts --top-k)", &bench_balance},
      {"permute", "the dispatch's sort into expert order with its row move, fused and unfused (--batch --seq "
                  "--experts --top-k --d-model)",
       &bench_permute},
      {"router", "the top-k router with the Switch statistics, forward and backward, fused and unfused (--batch "
                 "--seq --experts --top-k)",
       &bench_router},
  };
  return benches;
}

nlohmann::json bench_op(const std::string& name, const OpBenchOptions& options, Device device) {
  std::string known;
  for (const OpBench& b : op_benches()) {
    if (b.name == name) return b.run(options, device);
    known += (known.empty() ? "" : ", ") + b.name;
  }
  MOE_FAIL("bench op: unknown op '", name, "' (known: ", known, ")");
}

}  // namespace moe
