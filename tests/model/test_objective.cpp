// The objective seam: causal-LM targets from sampled windows (the next token), its attention
// mask and loss positions, the unknown kinds; and batches that keep their host ids,
// which the model routes on as given (never re-read from the device).
#include <catch2/catch.hpp>

#include "src/data/batch_sampler.h"
#include "src/model/model.h"
#include "tests/data/data_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;
using Catch::StartsWith;

namespace {

// A shard whose token i is (i * 7919) % 509: every window is recognisable by its values.
std::string make_shard(const test::TempDir& dir, int64_t n) {
  std::vector<uint32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = static_cast<uint32_t>((i * 7919) % 509);
  const auto path = dir.file("t.tok");
  data::write_token_shard(path, tokens, data::TokenDType::u16);
  return path;
}

// Inputs [r*S + t] are the window's tokens t, targets the token after each.
void require_next_token_targets(const Batch& b, const data::TokenDataset& ds, const std::vector<int64_t>& starts,
                                int64_t seq_len) {
  REQUIRE(b.batch_size == static_cast<int64_t>(starts.size()));
  REQUIRE(b.host_inputs.size() == starts.size() * static_cast<size_t>(seq_len));
  REQUIRE(b.host_targets.size() == b.host_inputs.size());
  for (size_t r = 0; r < starts.size(); ++r) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const size_t i = r * static_cast<size_t>(seq_len) + static_cast<size_t>(t);
      REQUIRE(b.host_inputs[i] == static_cast<int32_t>(ds.token(starts[r] + t)));
      REQUIRE(b.host_targets[i] == static_cast<int32_t>(ds.token(starts[r] + t + 1)));
    }
  }
  // The device tensors hold the same ids.
  REQUIRE(b.inputs.to_vector<int32_t>() == b.host_inputs);
  REQUIRE(b.targets.to_vector<int32_t>() == b.host_targets);
}

// Two layers with a hash-routed MoE layer (routes on the token ids) after a dense one.
Config hash_config() {
  Config c;
  c.model.vocab_size = 29;
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 6;
  c.model.d_ff = 12;
  c.moe.num_experts = 4;
  c.moe.top_k = 1;
  c.moe.d_expert = 6;
  c.moe.first_dense = 1;
  c.moe.router = "hash";
  validate_config(c);
  return c;
}

// The hash config's model in f64, initialised.
std::unique_ptr<Model> hash_model(const Config& c) {
  auto model = std::make_unique<Model>(c.model, c.moe);
  model->allocate(Device::cpu(), DType::f64);
  model->initialize(5);
  return model;
}

std::vector<int32_t> random_tokens(int64_t n, const Config& c, uint64_t seed) {
  return test::random_ids(n, c.model.vocab_size, seed).to_vector<int32_t>();
}

// The expert ids of every MoE layer of a forward (what dispatch used), concatenated.
std::vector<int32_t> routing_of(const ModelSaved& saved) {
  std::vector<int32_t> out;
  for (const auto& b : saved.blocks) {
    if (!b.moe.ids.defined()) continue;
    auto ids = b.moe.ids.to_vector<int32_t>();
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

}  // namespace

TEST_CASE("causal LM: inputs are the windows' tokens and targets the next ones", "[model][objective]") {
  test::TempDir dir;
  auto ds = data::TokenDataset::open(make_shard(dir, 3000));
  auto objective = make_objective(objective_kind("causal_lm"));
  REQUIRE(objective->kind() == ObjectiveKind::causal_lm);
  REQUIRE(std::string(objective_name(objective->kind())) == "causal_lm");
  REQUIRE(objective->attention_mask() == AttentionMask::causal);
  REQUIRE(objective->loss_positions(33) == 33);  // every position counts

  // Training windows (random starts) and evaluation windows (fixed, one token shared).
  data::BatchSampler sampler(ds, 1234, 6, 33);
  data::TokenWindows w = sampler.global(3);
  require_next_token_targets(objective->make_batch(w, 509, Device::cpu()), ds, w.starts, 33);
  data::EvalIterator it(ds, 4, 10);
  REQUIRE(it.next(w));
  REQUIRE(w.starts == std::vector<int64_t>{0, 10, 20, 30});
  require_next_token_targets(objective->make_batch(w, 509, Device::cpu()), ds, w.starts, 10);

  // Token ids of the data must lie in the model's vocabulary (the last target too).
  REQUIRE_THROWS_WITH(objective->make_batch(w, 300, Device::cpu()),
                      Contains("in the data is outside the model vocabulary (model.vocab_size = 300)"));
}

TEST_CASE("objective names: known ones round-trip, unknown ones are errors", "[model][objective][errors]") {
  REQUIRE(objective_kind("causal_lm") == ObjectiveKind::causal_lm);
  REQUIRE(std::string(objective_name(ObjectiveKind::causal_lm)) == "causal_lm");
  REQUIRE(objective_kind("masked_lm") == ObjectiveKind::masked_lm);
  REQUIRE(std::string(objective_name(ObjectiveKind::masked_lm)) == "masked_lm");
  REQUIRE_THROWS_WITH(objective_kind("prefix_lm"),
                      StartsWith("unknown model.objective 'prefix_lm' (expected causal_lm, masked_lm or "
                                 "span_corruption)"));
  // A model built from a config that skipped validation meets the same error.
  Config c = hash_config();
  c.model.objective = "prefix_lm";
  REQUIRE_THROWS_WITH(Model(c.model, c.moe), Contains("unknown model.objective 'prefix_lm'"));
  c.model.objective = "span_corruption";  // without its encoder
  REQUIRE_THROWS_WITH(Model(c.model, c.moe), Contains("model.objective = 'span_corruption' trains an encoder-decoder; "
                                                      "set model.encoder_layers"));
}

TEST_CASE("a bidirectional attention mask lets a token see later tokens; causal does not", "[model][objective]") {
  for (AttentionMask mask : {AttentionMask::causal, AttentionMask::bidirectional}) {
    ParamStore store;
    AttentionConfig cfg{8, 2, 2, 6};
    cfg.mask = mask;
    Attention attn(store, "attn", cfg);
    store.allocate(Device::cpu(), DType::f64);
    store.initialize(5);
    Tensor x = test::random_tensor({6, 8}, DType::f64, 6);
    Attention::Saved saved;
    const std::vector<double> before = attn.forward(x, 1, saved).to_vector<double>();
    std::vector<double> xv = x.to_vector<double>();
    for (size_t c = 0; c < 8; ++c) xv[5 * 8 + c] += 1.0;  // change the last token only
    const std::vector<double> after =
        attn.forward(Tensor::from_vector(xv, {6, 8}, DType::f64), 1, saved).to_vector<double>();
    double first_token_change = 0;
    for (size_t c = 0; c < 8; ++c) first_token_change += std::abs(after[c] - before[c]);
    INFO(attention_mask_name(mask));
    if (mask == AttentionMask::causal) {
      REQUIRE(first_token_change == 0.0);
    } else {
      REQUIRE(first_token_change > 1e-6);
    }
  }
}

TEST_CASE("a batch keeps its host ids and the model routes on them as given", "[model][objective][batch]") {
  const Config c = hash_config();
  auto owned = hash_model(c);
  Model& model = *owned;
  const int64_t n = 3 * c.model.seq_len;
  const auto ids = random_tokens(n, c, 41), targets = random_tokens(n, c, 42);

  struct Run {
    double loss = 0;
    std::vector<int32_t> routing;  // empty with recomputation (the forward keeps no ids)
    std::vector<double> grads;
  };
  auto run = [&](const Batch& batch, bool recompute) {
    model.set_recompute(recompute);
    model.params().zero_grads();
    ModelSaved saved;
    Run r;
    r.loss = model.forward(batch, saved).host_loss_sum();
    r.routing = routing_of(saved);
    model.backward(batch, saved, 0.5f, 1.0f);
    for (ParamGroup g : {ParamGroup::dense, ParamGroup::expert}) {
      auto grads = model.params().flat_grads(g).to_vector<double>();
      r.grads.insert(r.grads.end(), grads.begin(), grads.end());
    }
    return r;
  };

  // make_batch's host ids give the forward and backward of the host ids read back from the
  // device, which is what the model did before batches carried them (recomputation included).
  Batch batch = make_batch(ids, targets, 3, Device::cpu());
  REQUIRE(batch.host_inputs == ids);
  REQUIRE(batch.host_targets == targets);
  Batch read_back;
  read_back.batch_size = 3;
  read_back.inputs = batch.inputs;
  read_back.targets = batch.targets;
  read_back.host_inputs = batch.inputs.to_vector<int32_t>();
  read_back.host_targets = batch.targets.to_vector<int32_t>();
  const Run given = run(batch, false);
  const Run old = run(read_back, false);
  REQUIRE(given.loss == old.loss);
  REQUIRE(given.routing == old.routing);
  REQUIRE(given.grads == old.grads);
  for (const Batch* b : {&batch, &read_back}) {
    const Run recomputed = run(*b, true);
    REQUIRE(recomputed.loss == given.loss);
    REQUIRE(recomputed.grads == given.grads);
  }

  // Host ids that differ from the device ids: the hash layer routes on the host ids (as a
  // batch whose ids are those everywhere), not on the device copy; so does recomputation.
  std::vector<int32_t> shifted = ids;
  for (int32_t& id : shifted) id = (id + 1) % static_cast<int32_t>(c.model.vocab_size);
  Batch mixed = batch;
  mixed.host_inputs = shifted;
  const Run routed_shifted = run(make_batch(shifted, targets, 3, Device::cpu()), false);
  REQUIRE(routed_shifted.routing != given.routing);
  const Run as_given = run(mixed, false);
  REQUIRE(as_given.routing == routed_shifted.routing);
  REQUIRE(run(mixed, true).grads == as_given.grads);

  // A batch without its host ids is an error naming what is missing.
  Batch device_only;
  device_only.batch_size = 3;
  device_only.inputs = batch.inputs;
  device_only.targets = batch.targets;
  ModelSaved saved;
  REQUIRE_THROWS_WITH(model.forward(device_only, saved),
                      StartsWith("batch: 0 host token ids for 18 device ids (make batches with make_batch, which "
                                 "keeps the host ids)"));
}

TEST_CASE("generation logits come from host ids, as the forward's", "[model][objective][batch]") {
  const Config c = hash_config();
  auto model = hash_model(c);
  const int64_t n = 2 * c.model.seq_len;
  const auto ids = random_tokens(n, c, 3);
  Batch batch = make_batch(ids, random_tokens(n, c, 4), 2, Device::cpu());
  batch.training = false;
  ModelSaved saved;
  model->forward(batch, saved);
  Tensor logits = model->logits(ids, 2);
  REQUIRE(logits.size(0) == n);
  REQUIRE(logits.size(1) == c.model.vocab_size);
  REQUIRE(logits.to_vector<double>() == saved.logits.to_vector<double>());
  REQUIRE_THROWS_WITH(make_batch(ids, {}, 5, Device::cpu()),
                      StartsWith("batch: 12 token ids are not 5 sequences of equal length"));
  REQUIRE_THROWS_WITH(make_batch(ids, {1, 2}, 2, Device::cpu()), StartsWith("batch: 2 targets for 12 inputs"));
}
