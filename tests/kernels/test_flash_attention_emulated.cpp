// The tensor-core flash-attention kernels (kernels/cuda/flash_attention_*.cuh) run on the host
// under the warp emulator against the CPU reference: their tiling, MMA fragments, cp.async
// pipelining and masking are checked on every build, with or without a GPU.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tests/kernels/warp_emulator.h"

#include "kernels/cpu/attention.h"
#include "kernels/cuda/flash_attention_backward.cuh"
#include "kernels/cuda/flash_attention_forward.cuh"
#include "tests/test_util.h"

namespace moe::test {
namespace {

using cuda::flash::Params;

struct Case {
  int batch, seq_len, heads, kv_heads;
  bool causal;
  std::vector<std::vector<int>> docs = {};  // document lengths per sequence (document masking), or none
  int kv_seq_len = 0;                         // keys per sequence (cross-attention), 0 = seq_len
  int kv_len() const { return kv_seq_len != 0 ? kv_seq_len : seq_len; }
};

std::string describe(const Case& c, int head_dim) {
  return "batch " + std::to_string(c.batch) + " seq " + std::to_string(c.seq_len) + " heads " +
         std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " hd " + std::to_string(head_dim) +
         (c.causal ? " causal" : " non-causal") + (c.docs.empty() ? "" : " documents") +
         (c.kv_seq_len != 0 ? " kv " + std::to_string(c.kv_seq_len) : "");
}

// A device-style buffer: values inside `guard` elements of canary on each side, which must
// survive the kernel (no write outside the tensor).
template <typename T>
struct Guarded {
  static constexpr size_t k_guard = 64;
  std::vector<T> storage;
  T canary;
  Guarded(size_t n, T fill, T canary_value) : storage(n + 2 * k_guard, canary_value), canary(canary_value) {
    std::fill(data(), data() + n, fill);
  }
  T* data() { return storage.data() + k_guard; }
  size_t size() const { return storage.size() - 2 * k_guard; }
  bool guards_intact() const {
    for (size_t i = 0; i < k_guard; ++i) {
      if (std::memcmp(&storage[i], &canary, sizeof(T)) != 0) return false;
      if (std::memcmp(&storage[storage.size() - 1 - i], &canary, sizeof(T)) != 0) return false;
    }
    return true;
  }
  emu::Range range() { return {data(), size() * sizeof(T)}; }
};

// bf16 values (bits for the kernels, doubles for the reference), uniform in [lo, hi).
struct Bf16Values {
  std::vector<uint16_t> bits;
  std::vector<double> values;
};
Bf16Values random_bf16(int64_t n, uint64_t seed, double lo, double hi) {
  Bf16Values out;
  for (double x : random_values(n, seed, lo, hi)) {
    out.bits.push_back(f32_to_bf16_bits(static_cast<float>(x)));
    out.values.push_back(bf16_bits_to_f32(out.bits.back()));
  }
  return out;
}
Bf16Values bf16_of(const std::vector<double>& values) {
  Bf16Values out;
  for (double x : values) {
    out.bits.push_back(f32_to_bf16_bits(static_cast<float>(x)));
    out.values.push_back(bf16_bits_to_f32(out.bits.back()));
  }
  return out;
}

std::vector<double> as_doubles(const uint16_t* bits, size_t n) {
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = bf16_bits_to_f32(bits[i]);
  return out;
}

// One case: bf16 inputs (bits for the kernels, values for the reference) and the launch sizes.
struct Problem {
  Case c;
  int head_dim;
  int64_t q_numel, kv_numel, stat_numel;
  Bf16Values q, k, v, dout;
  std::vector<int32_t> doc_starts;  // empty: no document masking
  kernels::AttentionShape dims;
  Params params;
  std::vector<emu::Range> inputs;  // what cp.async may read
  const int32_t* starts() const { return doc_starts.empty() ? nullptr : doc_starts.data(); }

  Problem(const Case& cs, int hd, uint64_t seed) : c(cs), head_dim(hd) {
    const int64_t tokens = static_cast<int64_t>(c.batch) * c.seq_len;
    q_numel = tokens * c.heads * hd;
    kv_numel = static_cast<int64_t>(c.batch) * c.kv_len() * c.kv_heads * hd;
    stat_numel = static_cast<int64_t>(c.batch) * c.heads * c.seq_len;
    q = random_bf16(q_numel, seed, -2.0, 2.0);
    k = random_bf16(kv_numel, seed + 1, -2.0, 2.0);
    v = random_bf16(kv_numel, seed + 2, -1.0, 1.0);
    dout = random_bf16(q_numel, seed + 3, -1.0, 1.0);
    dims = {c.batch, c.seq_len, c.heads, c.kv_heads, hd, c.causal, c.kv_seq_len};
    params = cuda::flash::make_params(c.batch, c.seq_len, c.heads, c.kv_heads, hd, c.causal, c.kv_seq_len);
    params.q = q.bits.data();
    params.k = k.bits.data();
    params.v = v.bits.data();
    params.dout = dout.bits.data();
    for (const Bf16Values* x : {&q, &k, &v, &dout}) inputs.push_back({x->bits.data(), x->bits.size() * 2});
    if (!c.docs.empty()) {
      doc_starts = document_starts_of(c.docs, c.seq_len);
      params.doc_starts = doc_starts.data();
      inputs.push_back({doc_starts.data(), doc_starts.size() * sizeof(int32_t)});
    }
  }
};

// The emulated forward against cpu::attention_forward in double; returns the reference out, lse.
template <class F>
std::pair<std::vector<double>, std::vector<double>> check_forward(const Problem& pr, uint64_t seed) {
  const std::string what = describe(pr.c, pr.head_dim);
  std::vector<double> out_ref(static_cast<size_t>(pr.q_numel)), lse_ref(static_cast<size_t>(pr.stat_numel));
  cpu::attention_forward<double>(pr.q.values.data(), pr.k.values.data(), pr.v.values.data(), out_ref.data(),
                                 lse_ref.data(), pr.dims, pr.starts());
  Params p = pr.params;
  Guarded<uint16_t> out(static_cast<size_t>(pr.q_numel), 0x7fc0, 0x1234);  // bf16 NaN inside
  Guarded<float> lse(static_cast<size_t>(pr.stat_numel), NAN, -7.5f);
  p.out = out.data();
  p.lse = lse.data();
  const int query_blocks = cuda::flash::forward_query_blocks<F>(p);
  emu::run_grid({pr.c.heads, pr.c.batch, query_blocks}, F::kThreads, F::kSmemBytes, pr.inputs, seed,
                [&](emu::Dim3 blk, int tid, char* smem) {
                  cuda::flash::forward_grid_block<F>(p, blk.x, blk.y, blk.z, query_blocks, tid, smem);
                });
  CHECK(out.guards_intact());
  CHECK(lse.guards_intact());
  require_close(as_doubles(out.data(), out.size()), out_ref, 2e-2, 2e-2, "out " + what);
  require_close(std::vector<double>(lse.data(), lse.data() + lse.size()), lse_ref, 1e-3, 1e-3, "lse " + what);
  return {out_ref, lse_ref};
}

// delta = rowsum(dout * out) per (batch, head, row): the GPU preprocessing kernel's job.
std::vector<float> delta_of(const Problem& pr, const std::vector<double>& out) {
  const Case& c = pr.c;
  std::vector<float> delta(static_cast<size_t>(pr.stat_numel));
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < c.heads; ++h) {
      for (int i = 0; i < c.seq_len; ++i) {
        const int64_t at = ((static_cast<int64_t>(b) * c.seq_len + i) * c.heads + h) * pr.head_dim;
        float sum = 0.0f;
        for (int d = 0; d < pr.head_dim; ++d) {
          sum += static_cast<float>(pr.dout.values[static_cast<size_t>(at + d)] * out[static_cast<size_t>(at + d)]);
        }
        delta[static_cast<size_t>((static_cast<int64_t>(b) * c.heads + h) * c.seq_len + i)] = sum;
      }
    }
  }
  return delta;
}

// The emulated backward (then dq = scale * accumulator) against cpu::attention_backward in
// double, both fed the reference forward's out (bf16-rounded) and lse.
template <class B>
void check_backward(const Problem& pr, const std::vector<double>& out_ref, const std::vector<double>& lse_ref,
                    uint64_t seed) {
  const std::string what = describe(pr.c, pr.head_dim);
  const Bf16Values saved_out = bf16_of(out_ref);
  std::vector<float> saved_lse(lse_ref.begin(), lse_ref.end());
  const std::vector<double> lse_in(saved_lse.begin(), saved_lse.end());
  std::vector<double> dq_ref(static_cast<size_t>(pr.q_numel)), dk_ref(static_cast<size_t>(pr.kv_numel)),
      dv_ref(static_cast<size_t>(pr.kv_numel));
  cpu::attention_backward<double>(pr.q.values.data(), pr.k.values.data(), pr.v.values.data(), saved_out.values.data(),
                                  lse_in.data(), pr.dout.values.data(), dq_ref.data(), dk_ref.data(), dv_ref.data(),
                                  pr.dims, pr.starts());
  std::vector<float> delta = delta_of(pr, saved_out.values);
  Guarded<float> dq_accum(static_cast<size_t>(pr.q_numel), 0.0f, -3.25f);
  Guarded<uint16_t> dk(static_cast<size_t>(pr.kv_numel), 0x7fc0, 0x1234);
  Guarded<uint16_t> dv(static_cast<size_t>(pr.kv_numel), 0x7fc0, 0x1234);
  Params p = pr.params;
  p.lse_in = saved_lse.data();
  p.delta = delta.data();
  p.dq_accum = dq_accum.data();
  p.dk = dk.data();
  p.dv = dv.data();
  std::vector<emu::Range> globals = pr.inputs;
  globals.push_back(dq_accum.range());
  globals.push_back({saved_lse.data(), saved_lse.size() * sizeof(float)});
  globals.push_back({delta.data(), delta.size() * sizeof(float)});
  emu::run_grid({pr.c.kv_heads, pr.c.batch, cuda::flash::backward_key_blocks<B>(p)}, B::kThreads, B::kSmemBytes,
                globals, seed, [&](emu::Dim3 blk, int tid, char* smem) {
                  cuda::flash::backward_grid_block<B>(p, blk.x, blk.y, blk.z, tid, smem);
                });
  CHECK(dq_accum.guards_intact());
  CHECK(dk.guards_intact());
  CHECK(dv.guards_intact());
  std::vector<double> dq(dq_accum.size());
  for (size_t i = 0; i < dq.size(); ++i) dq[i] = bf16_bits_to_f32(f32_to_bf16_bits(dq_accum.data()[i] * p.scale));
  require_close(dq, dq_ref, 2e-2, 2e-2, "dq " + what);
  require_close(as_doubles(dk.data(), dk.size()), dk_ref, 2e-2, 2e-2, "dk " + what);
  require_close(as_doubles(dv.data(), dv.size()), dv_ref, 2e-2, 2e-2, "dv " + what);
}

// Forward and backward of one case through traits F and B.
template <class F, class B>
void check_case(const Case& c, uint64_t seed) {
  static_assert(F::kHeadDim == B::kHeadDim);
  INFO(describe(c, F::kHeadDim));
  const Problem pr(c, F::kHeadDim, seed);
  const auto [out_ref, lse_ref] = check_forward<F>(pr, seed);
  check_backward<B>(pr, out_ref, lse_ref, seed + 7);
}

template <class F, class B>
void check_cases(const std::vector<Case>& cases, uint64_t base_seed) {
  for (const Case& c : cases) {
    check_case<F, B>(c, base_seed + static_cast<uint64_t>(c.seq_len * 131 + c.heads * 17 + c.kv_heads + c.causal));
  }
}

TEST_CASE("emulated flash attention, head dim 64, matches the CPU reference", "[kernels][flash]") {
  using namespace cuda::flash;
  // Sequences of 1, 7 and not multiples of the tiles; GQA 3:1, MQA; causal and not.
  check_cases<ForwardHd64, BackwardHd64>({Case{1, 1, 1, 1, true}, Case{2, 7, 3, 1, true}, Case{1, 7, 2, 2, false},
                                          Case{1, 139, 2, 1, true}, Case{1, 139, 3, 3, false},
                                          Case{1, 300, 2, 1, true}},
                                         101);
}

TEST_CASE("emulated flash attention, head dim 128, matches the CPU reference", "[kernels][flash]") {
  using namespace cuda::flash;
  check_cases<ForwardHd128, BackwardHd128>({Case{1, 1, 2, 1, false}, Case{1, 7, 2, 2, true}, Case{1, 150, 2, 1, true},
                                            Case{1, 70, 3, 1, false}, Case{1, 260, 1, 1, false}},
                                           202);
}

TEST_CASE("emulated flash attention with other tile shapes (one 16-row tile per warp, two 16-key tiles)",
          "[kernels][flash]") {
  using namespace cuda::flash;
  // Forward warps of one m16 tile, backward warps of two key tiles and dQ over whole rows.
  using F = ForwardTraits<64, 64, 64, 4>;
  using B = BackwardTraits<64, 64, 128, 4>;
  check_cases<F, B>({Case{1, 100, 2, 1, true}, Case{2, 37, 1, 1, false}}, 303);
}

TEST_CASE("emulated flash attention with document masking matches the CPU reference", "[kernels][flash][documents]") {
  using namespace cuda::flash;
  // Documents of one token, documents crossing the forward's 128-row and the backward's 128-key
  // blocks (and their 64-row steps), key tiles wholly before a block's documents (skipped), a
  // document that is the whole sequence; GQA; two sequences cut differently.
  const std::vector<Case> hd64 = {Case{1, 300, 2, 1, true, {{1, 150, 7, 100, 42}}},
                                  Case{2, 139, 3, 1, true, {{64, 64, 11}, {1, 1, 137}}},
                                  Case{1, 7, 2, 2, true, {{7}}}};
  check_cases<ForwardHd64, BackwardHd64>(hd64, 404);
  check_cases<ForwardHd128, BackwardHd128>({Case{1, 260, 2, 1, true, {{3, 200, 57}}}}, 505);
  check_cases<ForwardTraits<64, 64, 64, 4>, BackwardTraits<64, 64, 128, 4>>({Case{1, 100, 2, 1, true, {{40, 1, 59}}}},
                                                                            606);
}

TEST_CASE("emulated flash attention, cross-attention (kv_seq_len != seq_len), matches the CPU reference",
          "[kernels][flash]") {
  using namespace cuda::flash;
  // Fewer and more keys than queries, key counts that are not multiples of the key tiles (64, 32
  // forward; 128 backward), one key, several key blocks in the backward; GQA; two sequences.
  const std::vector<Case> hd64 = {Case{2, 19, 4, 2, false, {}, 53}, Case{1, 128, 2, 1, false, {}, 300},
                                  Case{1, 200, 2, 2, false, {}, 77}, Case{1, 7, 2, 1, false, {}, 1}};
  check_cases<ForwardHd64, BackwardHd64>(hd64, 707);
  check_cases<ForwardHd128, BackwardHd128>({Case{2, 19, 2, 1, false, {}, 53}, Case{1, 130, 3, 1, false, {}, 45}}, 808);
}

}  // namespace
}  // namespace moe::test
