// Two micro-batches through the model together (Model::forward_pair / backward_pair, the schedule
// of parallel.a2a_overlap_microbatches): the same losses and gradients, bit for bit, as forward and
// backward of each micro-batch in turn; the blocks interleave (block i + 1 is held before block i is
// let go, in both directions); and the layouts it is not built for are refused.
#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

#include "src/model/model.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

Config pair_config() {
  Config c;
  c.model.vocab_size = 17;
  c.model.d_model = 8;
  c.model.num_layers = 3;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 6;
  c.model.d_ff = 12;
  c.model.init_std = 0.5;
  c.model.tie_embeddings = false;  // tied, the table adds its head and lookup parts in another order
  c.moe.num_experts = 4;
  c.moe.d_expert = 6;
  c.moe.first_dense = 1;  // block 0 dense, blocks 1 and 2 MoE (one with a shared expert below)
  c.moe.num_shared_experts = 1;
  c.moe.aux_loss_coef = 0.01;
  c.moe.z_loss_coef = 0.001;
  validate_config(c);
  return c;
}

std::unique_ptr<Model> pair_model(const Config& c) {
  auto model = std::make_unique<Model>(c.model, c.moe);
  model->allocate(Device::cpu(), DType::f64);
  model->initialize(3);
  return model;
}

Batch micro_batch(const Config& c, uint64_t seed) {
  const int64_t n = 2 * c.model.seq_len;
  std::vector<int32_t> inputs, targets;
  for (double v : test::random_values(n, seed)) inputs.push_back(static_cast<int32_t>(std::abs(v) * 1000) % 17);
  for (double v : test::random_values(n, seed + 1)) targets.push_back(static_cast<int32_t>(std::abs(v) * 1000) % 17);
  Batch b = make_batch(inputs, targets, 2, Device::cpu());
  b.noise_seed = seed;
  return b;
}

std::vector<double> all_grads(Model& model) {
  std::vector<double> out;
  for (int g = 0; g < k_num_param_groups; ++g) {
    const std::vector<double> part = model.params().flat_grads(static_cast<ParamGroup>(g)).to_vector<double>();
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

}  // namespace

TEST_CASE("a pair of micro-batches gives the losses and gradients of the two in turn", "[model][moe][overlap]") {
  const Config c = pair_config();
  auto model = pair_model(c);
  const Batch a = micro_batch(c, 11), b = micro_batch(c, 23);
  const float loss_scale = 1.0f / 24, aux_scale = 0.5f;

  model->params().zero_grads();
  ModelSaved sa, sb;
  ForwardOutput oa = model->forward(a, sa), ob = model->forward(b, sb);
  model->backward(a, sa, loss_scale, aux_scale);
  model->backward(b, sb, loss_scale, aux_scale);
  const std::vector<double> in_turn = all_grads(*model);

  model->params().zero_grads();
  ModelSaved pa, pb;
  std::vector<std::string> units;
  model->set_param_hook([&](const std::string& unit, bool acquire) { units.push_back((acquire ? "+" : "-") + unit); });
  std::array<ForwardOutput, 2> pair = model->forward_pair({&a, &b}, {&pa, &pb});
  model->backward_pair({&a, &b}, {&pa, &pb}, loss_scale, aux_scale);
  model->set_param_hook(nullptr);

  REQUIRE(pair[0].loss.to_vector<double>() == oa.loss.to_vector<double>());
  REQUIRE(pair[1].loss.to_vector<double>() == ob.loss.to_vector<double>());
  REQUIRE(pair[0].aux_loss == oa.aux_loss);
  REQUIRE(pair[1].aux_loss == ob.aux_loss);
  REQUIRE(pair[1].moe_layer_index == ob.moe_layer_index);
  // Each parameter still adds A's gradient before B's: the same sums in the same order.
  const std::vector<double> paired = all_grads(*model);
  REQUIRE(paired.size() == in_turn.size());
  size_t first_diff = paired.size();
  double worst = 0;
  for (size_t i = 0; i < paired.size(); ++i) {
    if (paired[i] != in_turn[i] && first_diff == paired.size()) first_diff = i;
    worst = std::max(worst, std::abs(paired[i] - in_turn[i]));
  }
  INFO("first difference at " << first_diff << " of " << paired.size() << ", largest " << worst);
  REQUIRE(paired == in_turn);

  // The blocks interleave: A's attention of block i + 1 runs inside B's FFN of block i, so block
  // i + 1 is taken before block i is let go; backward mirrors it.
  std::vector<std::string> blocks;
  for (const std::string& u : units) {
    if (u.find("layers.") != std::string::npos) blocks.push_back(u);
  }
  const std::vector<std::string> expected = {
      "+layers.0", "+layers.1", "-layers.0", "+layers.2", "-layers.1", "-layers.2",   // forward
      "+layers.2", "+layers.1", "-layers.2", "+layers.0", "-layers.1", "-layers.0"};  // backward
  REQUIRE(blocks == expected);
}

TEST_CASE("micro-batch pairs refuse what they are not built for", "[model][moe][overlap][errors]") {
  Config c = pair_config();
  auto model = pair_model(c);
  const Batch a = micro_batch(c, 11), b = micro_batch(c, 23);
  ModelSaved pa, pb;
  model->set_recompute(true);
  REQUIRE_THROWS_WITH(model->forward_pair({&a, &b}, {&pa, &pb}), Contains("train.recompute must be off"));

  // The config names the keys: a2a_overlap off, odd grad_accum, pipeline, recomputation, global scope.
  c.parallel.ep = 2;
  c.parallel.a2a_overlap = true;
  c.parallel.a2a_overlap_microbatches = true;
  c.train.grad_accum = 2;
  validate_config(c);
  auto refused = [&](Config bad, const std::string& why) {
    INFO(why);
    REQUIRE_THROWS_WITH(validate_config(bad), Contains(why));
  };
  Config off = c;
  off.parallel.a2a_overlap = false;
  refused(off, "it needs parallel.a2a_overlap = true");
  Config odd = c;
  odd.train.grad_accum = 3;
  refused(odd, "train.grad_accum = 3 must be even");
  Config piped = c;
  piped.parallel.pp = 2;
  refused(piped, "runs on one pipeline stage without tensor parallelism (parallel.pp = 2, parallel.tp = 1)");
  Config recompute = c;
  recompute.train.recompute = true;
  refused(recompute, "train.recompute must be false");
  Config global = c;
  global.moe.balance_scope = "global_batch";
  global.moe.z_loss_coef = 0;  // the global scope takes the Switch loss alone
  refused(global, "needs moe.balance_scope = 'micro_batch'");
}
