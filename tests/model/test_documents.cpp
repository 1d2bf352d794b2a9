// Documents packed into sequences (model.reset_positions / reset_attention): document starts
// from EOS, a packed document's logits equal the logits of that document alone, recomputation and
// the gradients agree, and the config refuses an EOS outside the vocabulary.
#include <catch2/catch.hpp>

#include "src/model/model.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

constexpr int32_t k_eos = 2;

Config packed_config(const std::string& positions, bool reset_positions, bool reset_attention, int64_t experts) {
  Config c;
  c.model.vocab_size = 13;
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 1;
  c.model.seq_len = 12;
  c.model.positions = positions;
  c.model.d_ff = 12;
  c.model.init_std = 0.5;
  c.model.reset_positions = reset_positions;
  c.model.reset_attention = reset_attention;
  c.moe.num_experts = experts;  // dropless top-2: each token routed on its own
  c.moe.d_expert = 6;
  c.moe.first_dense = 1;
  validate_config(c);
  return c;
}

std::unique_ptr<Model> packed_model(const Config& c) {
  auto model = std::make_unique<Model>(c.model, c.moe);
  model->allocate(Device::cpu(), DType::f64);
  model->initialize(5);
  return model;
}

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// Logit rows [first, first + count) of a [T, V] tensor.
std::vector<double> logit_rows(const Tensor& logits, int64_t first, int64_t count) {
  return logits.rows(first, first + count).to_vector<double>();
}

// Three documents packed into one sequence of 12: [3 4 5 EOS | 6 7 EOS | 8 9 10 11 12].
const std::vector<int32_t> k_packed = {3, 4, 5, k_eos, 6, 7, k_eos, 8, 9, 10, 11, 12};
struct DocumentSpan {
  int64_t first, length;
};
const DocumentSpan k_spans[] = {{0, 4}, {4, 3}, {7, 5}};

// The document alone at the start of a sequence, the rest filler (causal: it never reaches back).
std::vector<int32_t> alone(const DocumentSpan& d) {
  std::vector<int32_t> tokens(k_packed.begin() + d.first, k_packed.begin() + d.first + d.length);
  tokens.resize(k_packed.size(), 9);
  return tokens;
}

}  // namespace

TEST_CASE("document starts restart after each EOS and at each sequence", "[model][documents]") {
  // Sequences of 5: an EOS at the end of one sequence does not reach into the next; two EOS in a
  // row make a one-token document; an EOS first in a sequence ends a document of one token.
  const std::vector<int32_t> tokens = {7, k_eos, 9, k_eos, k_eos, k_eos, 5, 6, k_eos, 1};
  REQUIRE(document_starts(tokens, 5, k_eos) == std::vector<int32_t>{0, 0, 2, 2, 4, 0, 1, 1, 1, 4});
  REQUIRE(document_starts({1, 1, 1, 1}, 2, k_eos) == std::vector<int32_t>{0, 0, 0, 0});
  REQUIRE_THROWS_WITH(document_starts(tokens, 3, k_eos),
                      Contains("document starts: 10 token ids are not sequences of 3"));
}

TEST_CASE("a packed document's logits equal those of the document alone", "[model][documents]") {
  struct Variant {
    std::string positions;
    int64_t experts;
  };
  for (const Variant& v : {Variant{"rope", 0}, Variant{"learned", 0}, Variant{"rope", 4}, Variant{"learned", 4}}) {
    INFO("positions " << v.positions << " experts " << v.experts);
    const auto model = packed_model(packed_config(v.positions, true, true, v.experts));
    const Tensor packed = model->logits(k_packed, 1);
    for (const DocumentSpan& d : k_spans) {
      INFO("document at " << d.first);
      test::require_close(logit_rows(packed, d.first, d.length), logit_rows(model->logits(alone(d), 1), 0, d.length),
                          1e-12, 1e-10, "packed vs alone");
    }
    // Without the resets the later documents see the earlier ones (the comparison can fail).
    const auto plain = packed_model(packed_config(v.positions, false, false, v.experts));
    const Tensor mixed = plain->logits(k_packed, 1);
    const DocumentSpan& last = k_spans[2];
    REQUIRE(max_difference(logit_rows(mixed, last.first, last.length),
                           logit_rows(plain->logits(alone(last), 1), 0, last.length)) > 1e-3);
  }
}

TEST_CASE("learned positions need the position reset; rope positions are relative", "[model][documents]") {
  // Attention inside documents alone: rope scores depend on relative positions only, so the
  // documents still match; learned positions add absolute rows, so they do not.
  const DocumentSpan& d = k_spans[1];
  const auto rope = packed_model(packed_config("rope", false, true, 0));
  test::require_close(logit_rows(rope->logits(k_packed, 1), d.first, d.length),
                      logit_rows(rope->logits(alone(d), 1), 0, d.length), 1e-9, 1e-8, "rope, attention reset only");
  const auto learned = packed_model(packed_config("learned", false, true, 0));
  REQUIRE(max_difference(logit_rows(learned->logits(k_packed, 1), d.first, d.length),
                         logit_rows(learned->logits(alone(d), 1), 0, d.length)) > 1e-3);
}

TEST_CASE("recomputation with documents gives the same loss and gradients", "[model][documents]") {
  const Config c = packed_config("learned", true, true, 4);
  auto model = packed_model(c);
  std::vector<int32_t> inputs = k_packed;
  inputs.insert(inputs.end(), k_packed.rbegin(), k_packed.rend());  // a second sequence, other documents
  const auto targets = test::random_ids(24, c.model.vocab_size, 6).to_vector<int32_t>();
  const Batch batch = make_batch(inputs, targets, 2, Device::cpu());
  auto run = [&](bool recompute) {
    model->set_recompute(recompute);
    model->params().zero_grads();
    ModelSaved saved;
    const double loss = model->forward(batch, saved).host_loss_sum();
    model->backward(batch, saved, 0.5f, 0.25f);
    std::vector<double> grads;
    for (size_t i = 0; i < model->params().infos().size(); ++i) {
      auto g = model->params().grad(static_cast<ParamId>(i)).to_vector<double>();
      grads.insert(grads.end(), g.begin(), g.end());
    }
    return std::make_pair(loss, grads);
  };
  const auto kept = run(false), recomputed = run(true);
  REQUIRE(recomputed.first == kept.first);
  REQUIRE(recomputed.second == kept.second);
  REQUIRE(test::max_abs(kept.second) > 0);
}

TEST_CASE("the document options name an EOS outside the vocabulary", "[model][documents][errors]") {
  Config c = packed_config("rope", false, false, 0);
  c.model.eos_id = 13;
  REQUIRE_NOTHROW(validate_config(c));  // read only when a reset is on
  c.model.reset_attention = true;
  REQUIRE_THROWS_WITH(validate_config(c), Contains("model.eos_id = 13 is outside the vocabulary [0, model.vocab_size "
                                                   "= 13), but documents end with it"));
  c.model.eos_id = -1;
  c.model.reset_attention = false;
  c.model.reset_positions = true;
  REQUIRE_THROWS_WITH(validate_config(c), Contains("model.eos_id = -1 is outside the vocabulary"));
}
