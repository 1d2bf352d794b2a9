// Tensor-parallel attention and dense FFN on CPU ranks under mpirun (2 and 4 ranks, and 4 ranks
// as two TP groups of 2): f64 forward output, input gradient and every rank's parameter
// gradients equal the single-rank module's (same seed) and the matching slice of its gradients;
// the ranks' parameters reassemble into the single-rank module's; bad head / width splits fail
// with a message naming them. Sequence parallelism: the same modules on each rank's token rows.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/model/attention.h"
#include "src/nn/dense_ffn.h"
#include "experts/shared_experts.h"
#include "tests/parallel/tp_groups.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using Catch::Matchers::Contains;

constexpr double k_tol = 1e-10;

// Every TP parameter is the matching part of the reference parameter of the same name, and the
// parts of the group reassemble (disjoint places, summed over the group) into the whole tensor.
void check_params(const ParamStore& tp_store, const ParamStore& ref_store, Communicator& tp) {
  for (size_t i = 0; i < tp_store.infos().size(); ++i) {
    const ParamInfo& info = tp_store.infos()[i];
    INFO("parameter " << info.name);
    REQUIRE(info.is_split());
    Tensor ref = ref_store.param(ref_store.find(info.name));
    REQUIRE(ref.shape() == info.full_shape);
    Tensor local = tp_store.param(static_cast<ParamId>(i));
    REQUIRE(local_part(info, ref).to_vector<double>() == local.to_vector<double>());
    Tensor whole = Tensor::zeros(info.full_shape, DType::f64);
    place_local_part(info, local, whole);
    tp.all_reduce_sum(whole);
    REQUIRE(whole.to_vector<double>() == ref.to_vector<double>());
  }
}

// Every rank's parameter gradients equal its slice of the reference gradients.
void check_grads(const ParamStore& tp_store, const ParamStore& ref_store) {
  for (size_t i = 0; i < tp_store.infos().size(); ++i) {
    const ParamInfo& info = tp_store.infos()[i];
    Tensor ref = ref_store.grad(ref_store.find(info.name)).view(info.full_shape);
    test::require_close(tp_store.grad(static_cast<ParamId>(i)), local_part(info, ref), k_tol, 0,
                        "gradient of " + info.name);
  }
}

struct AttentionCase {
  int64_t num_heads, num_kv_heads;
  bool rope;
};

}  // namespace

TEST_CASE("tensor-parallel attention equals the single-rank attention", "[parallel][tp]") {
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, false);
  for (auto& group : groups) {
    Communicator& tp = *group;
    for (AttentionCase c : {AttentionCase{8, 4, true}, AttentionCase{8, 8, true}, AttentionCase{8, 4, false},
                            AttentionCase{4, 4, true}}) {
      INFO("tp " << tp.size() << " heads " << c.num_heads << " kv heads " << c.num_kv_heads << " rope " << c.rope);
      const int64_t batch = 2, seq = 5, d = 32, tokens = batch * seq;
      AttentionConfig cfg;
      cfg.d_model = d;
      cfg.num_heads = c.num_heads;
      cfg.num_kv_heads = c.num_kv_heads;
      cfg.seq_len = seq;
      cfg.rope = c.rope;
      cfg.init_std = 0.3;
      cfg.out_init_std = 0.2;

      ParamStore ref_store, tp_store;
      Attention ref(ref_store, "layers.0.attn", cfg);
      Attention par(tp_store, "layers.0.attn", cfg, TpGroup{&tp});
      REQUIRE(par.local_heads() == c.num_heads / tp.size());
      REQUIRE(par.local_kv_heads() == c.num_kv_heads / tp.size());
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(31);
      tp_store.initialize(31);
      check_params(tp_store, ref_store, tp);

      Tensor x = test::random_tensor({tokens, d}, DType::f64, 32);
      Tensor dy = test::random_tensor({tokens, d}, DType::f64, 33);
      ref_store.zero_grads();
      tp_store.zero_grads();
      Attention::Saved ref_saved, tp_saved;
      Tensor y_ref = ref.forward(x, batch, ref_saved);
      Tensor y_tp = par.forward(x, batch, tp_saved);
      test::require_close(y_tp, y_ref, k_tol, 0, "y");
      Tensor dx_ref = ref.backward(ref_saved, dy, batch);
      Tensor dx_tp = par.backward(tp_saved, dy, batch);
      test::require_close(dx_tp, dx_ref, k_tol, 0, "dx");
      check_grads(tp_store, ref_store);
    }
  }
}

TEST_CASE("tensor-parallel dense FFN equals the single-rank FFN", "[parallel][tp]") {
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, false);
  for (auto& group : groups) {
    Communicator& tp = *group;
    for (auto act : {ops::Activation::relu, ops::Activation::gelu, ops::Activation::geglu, ops::Activation::swiglu}) {
      INFO("tp " << tp.size() << " activation " << ops::activation_name(act));
      const int64_t tokens = 7, d = 6, d_ff = 12;
      ParamStore ref_store, tp_store;
      DenseFfn ref(ref_store, "layers.0.ffn", d, d_ff, act, 0.4, 0.3);
      DenseFfn par(tp_store, "layers.0.ffn", d, d_ff, act, 0.4, 0.3, TpGroup{&tp});
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(41);
      tp_store.initialize(41);
      check_params(tp_store, ref_store, tp);
      // A GLU rank's w_up is [gate cols of its slice | up cols of its slice].
      const ParamInfo& up = tp_store.info(tp_store.find("layers.0.ffn.w_up"));
      REQUIRE(up.shape == Shape{d, ffn_up_width(act, d_ff) / tp.size()});
      REQUIRE(up.col_blocks == (ops::is_gated(act) ? 2 : 1));
      REQUIRE(up.col_offset == tp.rank() * (d_ff / tp.size()));

      Tensor x = test::random_tensor({tokens, d}, DType::f64, 42);
      Tensor dy = test::random_tensor({tokens, d}, DType::f64, 43);
      ref_store.zero_grads();
      tp_store.zero_grads();
      FfnSaved ref_saved, tp_saved;
      Tensor y_ref = ref.forward(x, ref_saved);
      Tensor y_tp = par.forward(x, tp_saved);
      test::require_close(y_tp, y_ref, k_tol, 0, "y");
      Tensor dx_ref = ref.backward(ref_saved, dy);
      Tensor dx_tp = par.backward(tp_saved, dy);
      test::require_close(dx_tp, dx_ref, k_tol, 0, "dx");
      check_grads(tp_store, ref_store);
    }
  }
}

namespace {

// Gives every bias (zeros at init) the same random full values in both stores, and returns the
// gradient check for stores with replicated parameters: split ones against their slice of the
// reference gradient, replicated ones (the row-parallel biases) against the whole of it.
void randomize_biases(ParamStore& tp_store, ParamStore& ref_store) {
  uint64_t seed = 60;
  for (size_t i = 0; i < ref_store.infos().size(); ++i) {
    const ParamInfo& info = ref_store.infos()[i];
    if (info.kind != ParamKind::norm_or_bias) continue;
    Tensor full = test::random_tensor(info.shape, DType::f64, ++seed);
    ref_store.load_master_from_host(static_cast<ParamId>(i), full);
    const ParamId tp_id = tp_store.find(info.name);
    tp_store.load_master_from_host(tp_id, local_part(tp_store.info(tp_id), full));
  }
}

// 8 query and 4 kv heads with q/k/v biases (and the output bias when out_bias).
AttentionConfig biased_attention_config(int64_t d, int64_t seq, bool out_bias) {
  AttentionConfig cfg;
  cfg.d_model = d;
  cfg.num_heads = 8;
  cfg.num_kv_heads = 4;
  cfg.seq_len = seq;
  cfg.init_std = 0.3;
  cfg.out_init_std = 0.2;
  cfg.qkv_bias = true;
  cfg.out_bias = out_bias;
  return cfg;
}

void check_grads_with_replicated(const ParamStore& tp_store, const ParamStore& ref_store) {
  for (size_t i = 0; i < tp_store.infos().size(); ++i) {
    const ParamInfo& info = tp_store.infos()[i];
    Tensor ref = ref_store.grad(ref_store.find(info.name));
    Tensor want = info.is_split() ? local_part(info, ref.view(info.full_shape)) : ref;
    test::require_close(tp_store.grad(static_cast<ParamId>(i)), want, k_tol, 0, "gradient of " + info.name);
  }
}

}  // namespace

TEST_CASE("tensor-parallel attention and FFN with biases equal the single-rank modules", "[parallel][tp]") {
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, false);
  for (auto& group : groups) {
    Communicator& tp = *group;
    const int64_t batch = 2, seq = 5, d = 32, tokens = batch * seq;
    for (bool out_bias : {false, true}) {
      INFO("tp " << tp.size() << " attention, output bias " << out_bias);
      const AttentionConfig cfg = biased_attention_config(d, seq, out_bias);
      ParamStore ref_store, tp_store;
      Attention ref(ref_store, "layers.0.attn", cfg);
      Attention par(tp_store, "layers.0.attn", cfg, TpGroup{&tp});
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(31);
      tp_store.initialize(31);
      randomize_biases(tp_store, ref_store);
      REQUIRE(tp_store.info(tp_store.find("layers.0.attn.bk")).shape == Shape{4 * 4 / tp.size()});
      Tensor x = test::random_tensor({tokens, d}, DType::f64, 32);
      Tensor dy = test::random_tensor({tokens, d}, DType::f64, 33);
      ref_store.zero_grads();
      tp_store.zero_grads();
      Attention::Saved ref_saved, tp_saved;
      test::require_close(par.forward(x, batch, tp_saved), ref.forward(x, batch, ref_saved), k_tol, 0, "y");
      test::require_close(par.backward(tp_saved, dy, batch), ref.backward(ref_saved, dy, batch), k_tol, 0, "dx");
      check_grads_with_replicated(tp_store, ref_store);
    }
    for (auto act : {ops::Activation::gelu, ops::Activation::swiglu}) {
      INFO("tp " << tp.size() << " FFN with biases, activation " << ops::activation_name(act));
      ParamStore ref_store, tp_store;
      DenseFfn ref(ref_store, "layers.0.ffn", 6, 12, act, 0.4, 0.3, {}, true);
      DenseFfn par(tp_store, "layers.0.ffn", 6, 12, act, 0.4, 0.3, TpGroup{&tp}, true);
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(41);
      tp_store.initialize(41);
      randomize_biases(tp_store, ref_store);
      const ParamInfo& b_up = tp_store.info(tp_store.find("layers.0.ffn.b_up"));
      REQUIRE(b_up.col_blocks == (ops::is_gated(act) ? 2 : 1));  // a GLU rank keeps [gate | up] of its slice
      Tensor x = test::random_tensor({7, 6}, DType::f64, 42);
      Tensor dy = test::random_tensor({7, 6}, DType::f64, 43);
      ref_store.zero_grads();
      tp_store.zero_grads();
      FfnSaved ref_saved, tp_saved;
      test::require_close(par.forward(x, tp_saved), ref.forward(x, ref_saved), k_tol, 0, "y");
      test::require_close(par.backward(tp_saved, dy), ref.backward(ref_saved, dy), k_tol, 0, "dx");
      check_grads_with_replicated(tp_store, ref_store);
    }
  }
}

TEST_CASE("tensor-parallel shared experts equal the single-rank shared experts", "[parallel][tp]") {
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, false);
  for (auto& group : groups) {
    Communicator& tp = *group;
    for (bool gated : {false, true}) {
      INFO("tp " << tp.size() << " gated " << gated);
      const int64_t tokens = 5, d = 6, experts = 2, d_expert = 4;
      ParamStore ref_store, tp_store;
      SharedExperts ref(ref_store, "shared", d, experts, d_expert, ops::Activation::swiglu, gated, 0.4, 0.3);
      SharedExperts par(tp_store, "shared", d, experts, d_expert, ops::Activation::swiglu, gated, 0.4, 0.3,
                        TpGroup{&tp});
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(51);
      tp_store.initialize(51);
      Tensor x = test::random_tensor({tokens, d}, DType::f64, 52);
      Tensor dy = test::random_tensor({tokens, d}, DType::f64, 53);
      ref_store.zero_grads();
      tp_store.zero_grads();
      SharedExpertsSaved ref_saved, tp_saved;
      test::require_close(par.forward(x, tp_saved), ref.forward(x, ref_saved), k_tol, 0, "y");
      // backward adds into dx: start both from the same values.
      Tensor dx_ref = test::random_tensor({tokens, d}, DType::f64, 54), dx_tp = dx_ref.clone();
      ref.backward(ref_saved, dy, dx_ref);
      par.backward(tp_saved, dy, dx_tp);
      test::require_close(dx_tp, dx_ref, k_tol, 0, "dx");
      for (size_t i = 0; i < tp_store.infos().size(); ++i) {
        const ParamInfo& info = tp_store.infos()[i];
        Tensor ref_grad = ref_store.grad(ref_store.find(info.name)).view(info.is_split() ? info.full_shape : info.shape);
        test::require_close(tp_store.grad(static_cast<ParamId>(i)), local_part(info, ref_grad), k_tol, 0,
                            "gradient of " + info.name);
      }
    }
  }
}

namespace {

// This rank's rows [r*T/tp, (r+1)*T/tp) of t[T, d] (sequence parallelism's share of the tokens).
Tensor token_rows(const Tensor& t, const Communicator& tp) {
  const int64_t n = t.size(0) / tp.size();
  return t.rows(tp.rank() * n, (tp.rank() + 1) * n).clone();
}

// Sequence parallelism: a split parameter's gradient is its slice of the reference's; a replicated
// one's covers the rank's tokens only, and its sum over the group is the reference's.
void check_sequence_parallel_grads(const ParamStore& tp_store, const ParamStore& ref_store, Communicator& tp) {
  for (size_t i = 0; i < tp_store.infos().size(); ++i) {
    const ParamInfo& info = tp_store.infos()[i];
    Tensor ref = ref_store.grad(ref_store.find(info.name));
    Tensor got = tp_store.grad(static_cast<ParamId>(i)).clone();
    if (!info.is_split()) tp.all_reduce_sum(got);
    Tensor want = info.is_split() ? local_part(info, ref.view(info.full_shape)) : ref;
    test::require_close(got, want, k_tol, 0, "gradient of " + info.name);
  }
}

}  // namespace

TEST_CASE("sequence-parallel attention, FFN and shared experts equal the single-rank modules on their rows",
          "[parallel][tp]") {
  // Each rank passes its rows of x and dy: the outputs and input gradients are its rows of the
  // single-rank module's (all-gather before the column-parallel weights, reduce-scatter after the
  // row-parallel ones, the conjugates backward), in f64.
  auto world = make_world_communicator(Device::cpu());
  auto groups = test::tp_groups(*world, false);
  for (auto& group : groups) {
    Communicator& tp = *group;
    const TpGroup sp{&tp, true};
    REQUIRE(sp.sequence_sharded());
    const int64_t batch = 2, seq = 4, d = 32, tokens = batch * seq;
    Tensor x = test::random_tensor({tokens, d}, DType::f64, 72);
    Tensor dy = test::random_tensor({tokens, d}, DType::f64, 73);
    {
      INFO("tp " << tp.size() << " attention with biases");
      const AttentionConfig cfg = biased_attention_config(d, seq, true);
      ParamStore ref_store, tp_store;
      Attention ref(ref_store, "layers.0.attn", cfg);
      Attention par(tp_store, "layers.0.attn", cfg, sp);
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(31);
      tp_store.initialize(31);
      randomize_biases(tp_store, ref_store);
      Attention::Saved ref_saved, tp_saved;
      Tensor y = par.forward(token_rows(x, tp), batch, tp_saved);
      REQUIRE(tp_saved.x.size(0) == tokens / tp.size());  // the input is kept as this rank's rows
      test::require_close(y, token_rows(ref.forward(x, batch, ref_saved), tp), k_tol, 0, "y");
      test::require_close(par.backward(tp_saved, token_rows(dy, tp), batch),
                          token_rows(ref.backward(ref_saved, dy, batch), tp), k_tol, 0, "dx");
      check_sequence_parallel_grads(tp_store, ref_store, tp);
    }
    for (auto act : {ops::Activation::gelu, ops::Activation::swiglu}) {
      INFO("tp " << tp.size() << " FFN with biases, activation " << ops::activation_name(act));
      ParamStore ref_store, tp_store;
      DenseFfn ref(ref_store, "layers.0.ffn", d, 16, act, 0.4, 0.3, {}, true);
      DenseFfn par(tp_store, "layers.0.ffn", d, 16, act, 0.4, 0.3, sp, true);
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(41);
      tp_store.initialize(41);
      randomize_biases(tp_store, ref_store);
      FfnSaved ref_saved, tp_saved;
      test::require_close(par.forward(token_rows(x, tp), tp_saved), token_rows(ref.forward(x, ref_saved), tp), k_tol,
                          0, "y");
      test::require_close(par.backward(tp_saved, token_rows(dy, tp)), token_rows(ref.backward(ref_saved, dy), tp),
                          k_tol, 0, "dx");
      check_sequence_parallel_grads(tp_store, ref_store, tp);
    }
    for (bool gated : {false, true}) {
      INFO("tp " << tp.size() << " shared experts, gated " << gated);
      ParamStore ref_store, tp_store;
      SharedExperts ref(ref_store, "shared", d, 2, 4, ops::Activation::swiglu, gated, 0.4, 0.3);
      SharedExperts par(tp_store, "shared", d, 2, 4, ops::Activation::swiglu, gated, 0.4, 0.3, sp);
      ref_store.allocate(Device::cpu(), DType::f64);
      tp_store.allocate(Device::cpu(), DType::f64);
      ref_store.initialize(51);
      tp_store.initialize(51);
      SharedExpertsSaved ref_saved, tp_saved;
      test::require_close(par.forward(token_rows(x, tp), tp_saved), token_rows(ref.forward(x, ref_saved), tp), k_tol,
                          0, "y");
      Tensor dx_ref = test::random_tensor({tokens, d}, DType::f64, 54), dx_tp = token_rows(dx_ref, tp);
      ref.backward(ref_saved, dy, dx_ref);
      par.backward(tp_saved, token_rows(dy, tp), dx_tp);
      test::require_close(dx_tp, token_rows(dx_ref, tp), k_tol, 0, "dx");
      check_sequence_parallel_grads(tp_store, ref_store, tp);
    }
  }
}

TEST_CASE("tensor parallelism rejects splits that are not whole heads or whole widths", "[parallel][tp]") {
  auto world = make_world_communicator(Device::cpu());
  const int64_t n = world->size();
  AttentionConfig cfg;
  cfg.num_heads = n + 1;
  cfg.num_kv_heads = n + 1;
  cfg.d_model = 4 * (n + 1);
  cfg.seq_len = 3;
  ParamStore store;
  REQUIRE_THROWS_WITH(Attention(store, "attn", cfg, TpGroup{world.get()}),
                      Contains("splits whole heads") && Contains(std::to_string(n + 1) + " query heads") &&
                          Contains("parallel.tp = " + std::to_string(n)));
  // Query heads divide, kv heads do not.
  cfg.num_heads = 2 * n;
  cfg.num_kv_heads = 1;
  cfg.d_model = 4 * 2 * n;
  REQUIRE_THROWS_WITH(Attention(store, "attn2", cfg, TpGroup{world.get()}),
                      Contains("1 kv heads do not both divide by parallel.tp = " + std::to_string(n)));
  REQUIRE_THROWS_WITH(DenseFfn(store, "ffn", 4, n + 1, ops::Activation::swiglu, 0.02, 0.02, TpGroup{world.get()}),
                      Contains("d_ff " + std::to_string(n + 1) + " does not divide by parallel.tp = " + std::to_string(n)));
}

TEST_CASE("column shards check their blocks and columns", "[parallel][tp]") {
  ParamStore store;
  REQUIRE_THROWS_WITH(store.add_col_shard("w", {4, 6}, 0, 2, 4, ParamGroup::dense, ParamKind::weight),
                      Contains("[4,6] does not split into 4 column blocks"));
  REQUIRE_THROWS_WITH(store.add_col_shard("w", {4, 6}, 2, 2, 2, ParamGroup::dense, ParamKind::weight),
                      Contains("columns [2,4) outside a block of 3"));
  // Block layout: columns 1..2 of each of the two blocks [c0 c1 c2 | c3 c4 c5] -> [c1 c2 c4 c5].
  ParamId id = store.add_col_shard("w", {2, 6}, 1, 2, 2, ParamGroup::dense, ParamKind::weight);
  const ParamInfo& info = store.info(id);
  REQUIRE(info.shape == Shape{2, 4});
  REQUIRE(!info.is_row_shard());
  Tensor full = Tensor::from_vector(std::vector<double>{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15}, {2, 6}, DType::f64);
  Tensor local = local_part(info, full);
  REQUIRE(local.to_vector<double>() == std::vector<double>{1, 2, 4, 5, 11, 12, 14, 15});
  Tensor back = Tensor::zeros({2, 6}, DType::f64);
  place_local_part(info, local, back);
  REQUIRE(back.to_vector<double>() == std::vector<double>{0, 1, 2, 0, 4, 5, 0, 11, 12, 0, 14, 15});
}

}  // namespace moe
