// The AdamW update both optimizers share: the weight-decay rule by parameter kind, and AdamW over
// a whole store and AdamWUpdate over a range that cuts parameters, against the formula by hand.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "src/ops/ops.h"
#include "src/train/optimizer.h"
#include "tests/test_util.h"

using namespace moe;

namespace {

// Hyper-parameters exact in float (the op takes them as floats), so the hand reference in
// double computes the same numbers.
OptimConfig optim_config() {
  OptimConfig c;
  c.beta1 = 0.875;
  c.beta2 = 0.9375;
  c.eps = 1.0 / 1048576.0;
  c.weight_decay = 0.5;
  c.decay_norms_and_biases = false;
  c.decay_embeddings = true;
  return c;
}

// Dense group, in registration (= offset) order: weight [0,6), norm [6,10), buffer [10,13),
// embedding [13,21); one expert weight.
void build_store(ParamStore& store) {
  store.add("w", {2, 3}, ParamGroup::dense, ParamKind::weight);
  store.add("norm", {4}, ParamGroup::dense, ParamKind::norm_or_bias, ParamInit::ones);
  store.add("buf", {3}, ParamGroup::dense, ParamKind::buffer, ParamInit::zeros);
  store.add("emb", {2, 4}, ParamGroup::dense, ParamKind::embedding);
  store.add("experts.w", {5}, ParamGroup::expert, ParamKind::weight);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(7);
}

// Per flat element of build_store's groups under optim_config: the weight decay AdamW must apply
// (-1 = not updated: a buffer). Norms do not decay, embeddings do (decay_embeddings).
std::vector<double> dense_decay() {
  std::vector<double> out;
  out.insert(out.end(), 6, 0.5);   // w
  out.insert(out.end(), 4, 0.0);   // norm
  out.insert(out.end(), 3, -1.0);  // buf
  out.insert(out.end(), 8, 0.5);   // emb
  return out;
}

// One AdamW step by hand on elements [begin, end) of p, m, v (whole-group vectors).
void reference_step(std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                    const std::vector<double>& g, const std::vector<double>& wd, int64_t begin, int64_t end,
                    double lr, int64_t step, const OptimConfig& c) {
  for (int64_t i = begin; i < end; ++i) {
    const auto k = static_cast<size_t>(i);
    if (wd[k] < 0) continue;
    m[k] = c.beta1 * m[k] + (1 - c.beta1) * g[k];
    v[k] = c.beta2 * v[k] + (1 - c.beta2) * g[k] * g[k];
    const double mhat = m[k] / (1 - std::pow(c.beta1, static_cast<double>(step)));
    const double vhat = v[k] / (1 - std::pow(c.beta2, static_cast<double>(step)));
    p[k] -= lr * (mhat / (std::sqrt(vhat) + c.eps) + wd[k] * p[k]);
  }
}

}  // namespace

TEST_CASE("weight decay follows the parameter kind and the optim flags", "[train][optimizer]") {
  ParamInfo p;
  OptimConfig c;
  c.decay_norms_and_biases = false;
  c.decay_embeddings = false;
  p.kind = ParamKind::weight;
  REQUIRE(adamw_decays(p, c));
  p.kind = ParamKind::buffer;
  REQUIRE(!adamw_decays(p, c));
  p.kind = ParamKind::norm_or_bias;
  REQUIRE(!adamw_decays(p, c));
  c.decay_norms_and_biases = true;
  REQUIRE(adamw_decays(p, c));
  p.kind = ParamKind::embedding;
  REQUIRE(!adamw_decays(p, c));
  c.decay_embeddings = true;
  REQUIRE(adamw_decays(p, c));
}

TEST_CASE("AdamW and AdamWUpdate on a cut range follow the formula by hand", "[train][optimizer]") {
  const OptimConfig c = optim_config();
  const double lrs[3] = {0.0625, 0.03125, 0.125};  // a schedule: the lr of each step is used
  ParamStore whole, cut;
  build_store(whole);
  build_store(cut);
  AdamW adamw(whole, c);
  REQUIRE(adamw.decays(whole.info(whole.find("emb"))));
  REQUIRE(!adamw.decays(whole.info(whole.find("norm"))));
  // A ZeRO-like shard of the dense group: [3, 16) cuts "w" (decayed) and "emb" (decayed here).
  const FlatRange own{3, 16};  // also holds all of "norm" and "buf"
  const int64_t n = own.numel();
  AdamWUpdate update(cut, c, ParamGroup::dense, own);
  Tensor m = Tensor::zeros({n}, DType::f64), v = Tensor::zeros({n}, DType::f64);

  const int64_t dense_n = whole.group_numel(ParamGroup::dense), expert_n = whole.group_numel(ParamGroup::expert);
  const auto wd = dense_decay();
  const std::vector<double> wd_expert(static_cast<size_t>(expert_n), 0.5);
  REQUIRE(static_cast<int64_t>(wd.size()) == dense_n);
  auto p_ref = whole.flat_master(ParamGroup::dense).to_vector<double>();
  auto e_ref = whole.flat_master(ParamGroup::expert).to_vector<double>();
  auto cut_ref = p_ref;  // the same initial values (seed and names)
  std::vector<double> m_ref(static_cast<size_t>(dense_n), 0.0), v_ref = m_ref, m_cut = m_ref, v_cut = m_ref;
  std::vector<double> me_ref(static_cast<size_t>(expert_n), 0.0), ve_ref = me_ref;
  for (int64_t step = 1; step <= 3; ++step) {
    const double lr = lrs[step - 1];
    const auto g = test::random_values(dense_n, 100 + static_cast<uint64_t>(step), -2.0, 2.0);
    const auto ge = test::random_values(expert_n, 200 + static_cast<uint64_t>(step), -2.0, 2.0);
    for (ParamStore* s : {&whole, &cut}) {
      s->flat_grads(ParamGroup::dense).copy_from(test::f64_tensor(g, {dense_n}));
      s->flat_grads(ParamGroup::expert).copy_from(test::f64_tensor(ge, {expert_n}));
    }
    adamw.step(lr, step);
    update.apply(cut.flat_master(ParamGroup::dense).rows(own.begin, own.end),
                 cut.flat_grads(ParamGroup::dense).rows(own.begin, own.end), m, v, lr, step);
    reference_step(p_ref, m_ref, v_ref, g, wd, 0, dense_n, lr, step, c);
    reference_step(e_ref, me_ref, ve_ref, ge, wd_expert, 0, expert_n, lr, step, c);
    reference_step(cut_ref, m_cut, v_cut, g, wd, own.begin, own.end, lr, step, c);
    INFO("step " << step);
    test::require_close(whole.flat_master(ParamGroup::dense).to_vector<double>(), p_ref, 1e-15, 1e-13, "dense");
    test::require_close(whole.flat_master(ParamGroup::expert).to_vector<double>(), e_ref, 1e-15, 1e-13, "expert");
    test::require_close(adamw.moment2(ParamGroup::dense).to_vector<double>(), v_ref, 1e-15, 1e-13, "v");
    // Outside the range nothing moves; inside, each cut parameter keeps its own decay.
    test::require_close(cut.flat_master(ParamGroup::dense).to_vector<double>(), cut_ref, 1e-15, 1e-13, "cut");
    test::require_close(m.to_vector<double>(), std::vector<double>(m_cut.begin() + own.begin, m_cut.begin() + own.end),
                        1e-15, 1e-13, "cut m");
  }
  REQUIRE(whole.master(whole.find("buf")).to_vector<double>() == std::vector<double>(3, 0.0));
}

TEST_CASE("AdamWUpdate's run table covers the range: decay, no decay, buffers copied", "[train][optimizer]") {
  ParamStore store;
  build_store(store);
  const OptimConfig c = optim_config();
  AdamWUpdate whole(store, c, ParamGroup::dense, {0, store.group_numel(ParamGroup::dense)});
  // w decays, norm does not, buf is only copied, emb decays (decay_embeddings).
  REQUIRE(whole.runs().to_vector<int64_t>() == std::vector<int64_t>{0, 6, 1, 6, 10, 0, 10, 13, 2, 13, 21, 1});
  AdamWUpdate cut(store, c, ParamGroup::dense, {3, 16});  // rows relative to the range's start
  REQUIRE(cut.runs().to_vector<int64_t>() == std::vector<int64_t>{0, 3, 1, 3, 7, 0, 7, 10, 2, 10, 13, 1});
}

TEST_CASE("the fused AdamW with a clip scale equals AdamW on gradients scaled in place", "[train][optimizer]") {
  const OptimConfig c = optim_config();
  ParamStore scaled, fused;
  build_store(scaled);
  build_store(fused);
  const int64_t n = scaled.group_numel(ParamGroup::dense);
  AdamWUpdate update(fused, c, ParamGroup::dense, {0, n});
  AdamWUpdate reference(scaled, c, ParamGroup::dense, {0, n});
  Tensor m = Tensor::zeros({n}, DType::f64), v = Tensor::zeros({n}, DType::f64);
  Tensor m_ref = Tensor::zeros({n}, DType::f64), v_ref = Tensor::zeros({n}, DType::f64);
  Tensor scale = Tensor::from_vector(std::vector<float>{0.3f}, {1}, DType::f32);
  const auto g = test::random_values(n, 11, -2.0, 2.0);
  fused.flat_grads(ParamGroup::dense).copy_from(test::f64_tensor(g, {n}));
  scaled.flat_grads(ParamGroup::dense).copy_from(test::f64_tensor(g, {n}));
  ops::scale(scaled.flat_grads(ParamGroup::dense), 0.3f);
  Tensor compute_copy = Tensor::zeros({n}, DType::f32);  // f64 master -> f32 copy in the same pass
  update.apply(fused.flat_master(ParamGroup::dense), fused.flat_grads(ParamGroup::dense), m, v, 0.0625, 2, scale,
               compute_copy);
  reference.apply(scaled.flat_master(ParamGroup::dense), scaled.flat_grads(ParamGroup::dense), m_ref, v_ref, 0.0625, 2);
  const auto got = fused.flat_master(ParamGroup::dense).to_vector<double>();
  REQUIRE(got == scaled.flat_master(ParamGroup::dense).to_vector<double>());  // bit-identical
  REQUIRE(m.to_vector<double>() == m_ref.to_vector<double>());
  const auto copy = compute_copy.to_vector<double>();
  for (size_t i = 0; i < got.size(); ++i) REQUIRE(copy[i] == static_cast<double>(static_cast<float>(got[i])));
  // The gradients themselves stay unscaled.
  REQUIRE(fused.flat_grads(ParamGroup::dense).to_vector<double>() == test::f64_tensor(g, {n}).to_vector<double>());
}
