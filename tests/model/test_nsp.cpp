// Next-sentence prediction (masked LM with objective.nsp): the [CLS] A [SEP] B [SEP] layout and
// the source of B checked row by row, the IsNext rate and the split point over many samples,
// partner windows drawn from the keys alone, and the f64 gradient of the pair head.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "src/data/batch_sampler.h"
#include "src/data/token_shard.h"
#include "src/model/masked_lm.h"
#include "src/model/nsp_head.h"
#include "tests/data/data_test_util.h"
#include "tests/module_test_util.h"
#include "tests/test_util.h"

using namespace moe;
using Catch::Contains;

namespace {

constexpr int32_t k_eos = 2, k_mask = 3, k_cls = 4, k_sep = 5;

ObjectiveOptions nsp_options(int64_t vocab) {
  ObjectiveOptions o;
  o.rates.nsp = true;
  o.tokens = {k_mask, k_cls, k_sep};
  o.vocab_size = vocab;
  o.seed = 99;
  o.eos_id = k_eos;
  return o;
}

// rows windows whose tokens say where they come from: window r holds 1000 + 100 r + i at i, its
// partner 5000 + 100 r + i, except an end-of-document token at partner position eos_at (< 0: none).
data::TokenWindows labelled_windows(int64_t rows, int64_t seq_len, int64_t eos_at, int64_t first = 0) {
  data::TokenWindows w;
  w.rows = rows;
  w.seq_len = seq_len;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < w.window_length(); ++i) {
      w.tokens.push_back(static_cast<int32_t>(1000 + 100 * r + i));
      w.partners.push_back(i == eos_at ? k_eos : static_cast<int32_t>(5000 + 100 * r + i));
    }
    w.starts.push_back(0);
    w.keys.push_back(data::global_sample_key(first + r));
  }
  return w;
}

// A shard of n consecutive ids from `first`.
data::TokenDataset iota_shard(const test::TempDir& dir, const std::string& name, int64_t n, uint32_t first) {
  std::vector<uint32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = first + static_cast<uint32_t>(i);
  data::write_token_shard(dir.file(name), tokens, data::TokenDType::u16);
  return data::TokenDataset::open(dir.file(name));
}

struct Pair {
  int64_t a = 0;  // tokens of A
  bool is_next = false;
};

// Checks row r of a built batch exactly: [CLS] A [SEP] B [SEP], A the window's first a tokens, B
// the next ones (IsNext) or the partner's from b_start (NotNext), the label at [CLS], and masking
// only inside A and B. Masked inputs are read back through their targets.
Pair check_row(const data::TokenWindows& w, const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t r,
               int64_t b_start) {
  const int64_t S = w.seq_len;
  std::vector<int32_t> seen(static_cast<size_t>(S));
  for (int64_t i = 0; i < S; ++i) {
    const size_t at = static_cast<size_t>(r * S + i);
    seen[static_cast<size_t>(i)] = tg[at] >= 0 ? tg[at] : in[at];
  }
  REQUIRE(in[static_cast<size_t>(r * S)] == k_cls);
  REQUIRE(in[static_cast<size_t>(r * S + S - 1)] == k_sep);
  Pair p;
  while (p.a + 1 < S && in[static_cast<size_t>(r * S + 1 + p.a)] != k_sep) ++p.a;
  const int64_t b = S - 3 - p.a;
  REQUIRE(p.a >= 1);
  REQUIRE(b >= 1);
  const int32_t label = tg[static_cast<size_t>(r * S)];
  REQUIRE((label == k_nsp_is_next_target || label == k_nsp_not_next_target));
  p.is_next = label == k_nsp_is_next_target;
  for (int64_t i = 0; i < p.a; ++i) REQUIRE(seen[static_cast<size_t>(1 + i)] == w.window(r)[i]);
  for (int64_t i = 0; i < b; ++i) {
    const int32_t expected = p.is_next ? w.window(r)[p.a + i] : w.partner(r)[b_start + i];
    REQUIRE(seen[static_cast<size_t>(2 + p.a + i)] == expected);
  }
  for (int64_t i : {int64_t{0}, 1 + p.a, S - 1}) REQUIRE(tg[static_cast<size_t>(r * S + i)] < 0);  // never masked
  return p;
}

}  // namespace

TEST_CASE("next-sentence pairs are [CLS] A [SEP] B [SEP], B the continuation or from the partner",
          "[model][objective][masked_lm][nsp]") {
  const int64_t seq_len = 12;  // 9 tokens of A and B
  MaskedLm mlm(nsp_options(6000));
  REQUIRE(mlm.predicts_next_sentence());
  REQUIRE(mlm.special_tokens() == std::vector<std::string>{"[MASK]", "[CLS]", "[SEP]"});
  REQUIRE(mlm.loss_positions(seq_len) == 1);  // round(0.15 * 9)
  for (int64_t eos_at : {int64_t{-1}, int64_t{3}}) {
    INFO("partner end-of-document at " << eos_at);
    const data::TokenWindows w = labelled_windows(64, seq_len, eos_at);
    std::vector<int32_t> in, tg;
    mlm.build(w, in, tg);
    const std::vector<int32_t> labels = nsp_labels(tg, seq_len);
    int64_t next = 0;
    for (int64_t r = 0; r < w.rows; ++r) {
      // B starts after the partner's end-of-document token when it leaves room for B, else at 0.
      int64_t a = 0;
      while (in[static_cast<size_t>(r * seq_len + 1 + a)] != k_sep) ++a;
      const int64_t b = seq_len - 3 - a;
      const int64_t b_start = eos_at >= 0 && eos_at + 1 + b <= w.window_length() ? eos_at + 1 : 0;
      const Pair p = check_row(w, in, tg, r, b_start);
      REQUIRE(labels[static_cast<size_t>(r)] == (p.is_next ? 1 : 0));
      next += p.is_next ? 1 : 0;
    }
    REQUIRE(next > 0);
    REQUIRE(next < w.rows);
  }
}

TEST_CASE("half the pairs are IsNext, the split is uniform and masking stays inside A and B",
          "[model][objective][masked_lm][nsp]") {
  const int64_t rows = 20000, seq_len = 23;  // 20 tokens of A and B: a in [1, 19]
  MaskedLm mlm(nsp_options(6000));
  const data::TokenWindows w = labelled_windows(rows, seq_len, -1);
  std::vector<int32_t> in, tg;
  mlm.build(w, in, tg);
  REQUIRE(mlm.loss_positions(seq_len) == 3);  // round(0.15 * 20)
  int64_t next = 0;
  std::vector<int64_t> split(static_cast<size_t>(seq_len), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t a = 0, selected = 0;
    while (in[static_cast<size_t>(r * seq_len + 1 + a)] != k_sep) ++a;
    ++split[static_cast<size_t>(a)];
    next += tg[static_cast<size_t>(r * seq_len)] == k_nsp_is_next_target ? 1 : 0;
    for (int64_t i = 1; i < seq_len; ++i) selected += tg[static_cast<size_t>(r * seq_len + i)] >= 0 ? 1 : 0;
    REQUIRE(selected == 3);
  }
  // 0.5 within 4 standard deviations (0.0035 each); every split about rows / 19.
  REQUIRE(std::abs(static_cast<double>(next) / rows - 0.5) < 0.014);
  for (int64_t a = 1; a <= 19; ++a) {
    INFO("split a = " << a);
    REQUIRE(std::abs(static_cast<double>(split[static_cast<size_t>(a)]) / rows - 1.0 / 19) < 0.007);
  }
}

TEST_CASE("next-sentence choices and partner windows come from the sample keys alone",
          "[model][objective][masked_lm][nsp]") {
  test::TempDir dir;
  const data::TokenDataset a = iota_shard(dir, "a.tok", 300, 0), b = iota_shard(dir, "b.tok", 50, 1000);
  const std::vector<const data::TokenDataset*> shards{&a, &b};
  // Windows 0..9 at once, and the same samples split 4 + 6: the same partners, pairs and masks.
  data::TokenWindows all = labelled_windows(10, 8, -1), first = labelled_windows(4, 8, -1);
  data::TokenWindows rest = labelled_windows(6, 8, -1, 4);
  for (data::TokenWindows* w : {&all, &first, &rest}) data::add_partner_windows(*w, shards, 7);
  std::vector<int32_t> joined(first.partners);
  joined.insert(joined.end(), rest.partners.begin(), rest.partners.end());
  REQUIRE(joined == all.partners);
  // Each partner is 9 consecutive tokens of one shard.
  for (int64_t r = 0; r < all.rows; ++r) {
    const int32_t* p = all.partner(r);
    for (int64_t i = 1; i < 9; ++i) REQUIRE(p[i] == p[0] + i);
    REQUIRE(((p[0] >= 0 && p[0] + 8 < 300) || (p[0] >= 1000 && p[0] + 8 < 1050)));
  }
  // Over many keys both shards serve partners, in proportion to their starts (292 : 42).
  data::TokenWindows many = labelled_windows(4000, 8, -1);
  data::add_partner_windows(many, shards, 7);
  int64_t from_b = 0;
  for (int64_t r = 0; r < many.rows; ++r) from_b += many.partner(r)[0] >= 1000 ? 1 : 0;
  REQUIRE(std::abs(static_cast<double>(from_b) / 4000 - 42.0 / 334) < 0.03);
  // A different seed draws other partners.
  data::TokenWindows other = labelled_windows(10, 8, -1);
  data::add_partner_windows(other, shards, 8);
  REQUIRE(other.partners != all.partners);
}

TEST_CASE("next-sentence prediction errors name what is missing", "[model][objective][masked_lm][nsp][errors]") {
  data::TokenWindows w = labelled_windows(2, 8, -1);
  std::vector<int32_t> in, tg;
  ObjectiveOptions o = nsp_options(6000);
  o.tokens.sep = -1;
  REQUIRE_THROWS_WITH(MaskedLm(o).build(w, in, tg), Contains("needs the [CLS] and [SEP] ids"));
  w.partners.clear();
  REQUIRE_THROWS_WITH(MaskedLm(nsp_options(6000)).build(w, in, tg), Contains("needs a partner window per window"));
  REQUIRE_THROWS_WITH(nsp_labels({-1, 7, 7, 7}, 4), Contains("sequence 0 has target -1 at its [CLS] position"));
  data::TokenWindows short_data = labelled_windows(1, 8, -1);
  test::TempDir dir;
  const data::TokenDataset tiny = iota_shard(dir, "t.tok", 5, 0);
  REQUIRE_THROWS_WITH(data::add_partner_windows(short_data, {&tiny}, 1), Contains("no shard holds a window of 9"));
}

TEST_CASE("next-sentence head gradients match finite differences", "[model][gradcheck][module][nsp]") {
  const int64_t batch = 3, seq_len = 4, d = 5;
  ParamStore store;
  NspHead head(store, d, test::k_init_std);
  store.allocate(Device::cpu(), DType::f64);
  store.initialize(5);
  test::randomize_param(store, store.find("nsp_head.bias"), 6, -1.0, 1.0);
  Tensor hidden = test::random_tensor({batch * seq_len, d}, DType::f64, 7, Device::cpu(), -2.0, 2.0);
  const std::vector<int32_t> labels{1, 0, 1};
  const float scale = 0.75f;
  auto objective = [&]() {
    NspSaved s;
    return scale * ops::sum(head.forward(hidden, seq_len, labels, s));
  };
  store.zero_grads();
  NspSaved saved;
  Tensor loss = head.forward(hidden, seq_len, labels, saved);
  Tensor dhidden = Tensor::zeros(hidden.shape(), DType::f64);
  head.backward(saved, scale, dhidden);
  test::check_gradient(dhidden.to_vector<double>(), hidden, objective, "dhidden");
  test::check_param_gradients(store, objective);
  // Only the [CLS] rows get a gradient; the loss is -log softmax at the label.
  const auto dh = dhidden.to_vector<double>();
  for (int64_t row = 0; row < batch * seq_len; ++row) {
    if (row % seq_len == 0) continue;
    for (int64_t c = 0; c < d; ++c) REQUIRE(dh[static_cast<size_t>(row * d + c)] == 0.0);
  }
  const auto logits = saved.logits.to_vector<double>(), losses = loss.to_vector<double>();
  for (int64_t b = 0; b < batch; ++b) {
    const double l0 = logits[static_cast<size_t>(2 * b)], l1 = logits[static_cast<size_t>(2 * b + 1)];
    const double target = labels[static_cast<size_t>(b)] == 1 ? l1 : l0;
    REQUIRE(losses[static_cast<size_t>(b)] == Approx(std::log(std::exp(l0) + std::exp(l1)) - target).epsilon(1e-12));
  }
  REQUIRE(nsp_correct(Tensor::from_vector(std::vector<double>{0.1, 0.7, 0.69}, {3}, DType::f64)) == 2);
}
