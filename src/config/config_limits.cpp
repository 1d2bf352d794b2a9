// validate_sizes: upper limits on every size key and on the products that size one tensor or one
// micro-batch's buffers, so absurd values fail naming the keys instead of overflowing later.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "src/config/config_fields.h"
#include "src/util/check.h"

namespace moe::config_internal {
namespace {

constexpr int64_t k_max_width = int64_t{1} << 20;            // d_model, d_ff, d_expert, d_shared
constexpr int64_t k_max_seq_len = int64_t{1} << 22;
constexpr int64_t k_max_layers = int64_t{1} << 12;
constexpr int64_t k_max_experts = int64_t{1} << 16;          // routed experts of a layer, after granularity
constexpr int64_t k_max_count = int64_t{1} << 20;            // batch sizes, accumulation, small counts
constexpr int64_t k_max_elements = int64_t{1} << 40;         // one tensor, or one micro-batch's activations
constexpr int64_t k_max_params = int64_t{1} << 42;           // the whole model

std::string power_text(int64_t bound) {
  int shift = 0;
  while ((int64_t{1} << shift) < bound) ++shift;
  return "2^" + std::to_string(shift) + " = " + std::to_string(bound);
}

void check_at_most(const KeyOrigins& at, const char* key, int64_t value, int64_t bound) {
  MOE_CHECK(value <= bound, at.prefix({key}), key, " = ", value, " is larger than the limit of ", power_text(bound));
}

// The product of positive factors in 128 bits (factors <= 0 fail their own checks instead).
using Factors = std::initializer_list<std::pair<const char*, int64_t>>;
void check_product(const KeyOrigins& at, Factors factors, int64_t bound, const char* what) {
  unsigned __int128 product = 1;
  std::string keys, values;
  for (const auto& [key, value] : factors) {
    if (value <= 0) return;
    product *= static_cast<unsigned __int128>(value);
    keys += (keys.empty() ? "" : " * ") + std::string(key);
    values += (values.empty() ? "" : " * ") + std::to_string(value);
  }
  if (product <= static_cast<unsigned __int128>(bound)) return;
  const double approx = static_cast<double>(product);
  std::string origin = at.prefix({});  // the first factor set in the file or by --set, else the file
  for (const auto& factor : factors) {
    if (at.where.count(factor.first)) {
      origin = at.prefix({factor.first});
      break;
    }
  }
  MOE_FAIL(origin, keys, " = ", values, " = ", approx, " ", what,
           " is larger than the limit of ", power_text(bound));
}

}  // namespace

void validate_sizes(const Config& c, const KeyOrigins& at) {
  const ModelConfig& m = c.model;
  const MoeConfig& e = c.moe;
  const TrainConfig& t = c.train;
  MOE_CHECK(m.vocab_size <= std::numeric_limits<int32_t>::max(), at.prefix({"model.vocab_size"}),
            "model.vocab_size = ", m.vocab_size, " does not fit 32-bit token ids");
  for (auto [key, value] : {std::pair{"model.d_model", m.d_model}, {"model.d_ff", m.d_ff},
                            {"moe.d_expert", e.d_expert}, {"moe.d_shared", e.d_shared}}) {
    check_at_most(at, key, value, k_max_width);
  }
  check_at_most(at, "model.seq_len", m.seq_len, k_max_seq_len);
  check_at_most(at, "model.num_layers", m.num_layers, k_max_layers);
  check_at_most(at, "moe.num_experts", e.num_experts, k_max_experts);
  check_at_most(at, "moe.granularity", e.granularity, k_max_experts);
  for (auto [key, value] : {std::pair{"moe.num_shared_experts", e.num_shared_experts},
                            {"moe.hash_count", e.hash_count}, {"train.micro_batch_size", t.micro_batch_size},
                            {"train.grad_accum", t.grad_accum}, {"train.eval_batches", t.eval_batches}}) {
    check_at_most(at, key, value, k_max_count);
  }
  check_product(at, {{"moe.num_experts", e.num_experts}, {"moe.granularity", e.granularity}}, k_max_experts,
                "routed experts per layer");
  check_product(at, {{"model.vocab_size", m.vocab_size}, {"model.d_model", m.d_model}}, k_max_elements,
                "embedding elements");
  check_product(at, {{"model.d_model", m.d_model}, {"model.d_ff", m.d_ff}}, k_max_elements, "dense FFN elements");
  if (e.num_experts > 0) {
    check_product(at, {{"moe.num_experts", e.num_experts}, {"model.d_model", m.d_model}, {"moe.d_expert", e.d_expert}},
                  k_max_elements, "expert weight elements per layer");
  }
  check_product(at, {{"train.micro_batch_size", t.micro_batch_size}, {"model.seq_len", m.seq_len},
                     {"model.vocab_size", m.vocab_size}},
                k_max_elements, "logits per micro-batch");
  check_product(at, {{"train.micro_batch_size", t.micro_batch_size}, {"model.seq_len", m.seq_len},
                     {"model.d_model", m.d_model}},
                k_max_elements, "activations per micro-batch and layer");
  // The whole model, roughly (attention 4 d^2, the FFN or all experts 3 d f per layer): a bound.
  const int64_t width = std::max(m.d_ff, e.num_experts * e.d_expert);
  check_product(at, {{"model.num_layers", m.num_layers}, {"model.d_model", m.d_model},
                     {"(4 * model.d_model + 3 * FFN width)", 4 * m.d_model + 3 * width}},
                k_max_params, "parameters");
}

}  // namespace moe::config_internal
