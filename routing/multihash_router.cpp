// MultiHash routing: the N experts of every token id are tabulated once from the seed; routing
// looks the batch's token ids up on the host and uploads ids and constant weights 1/N.
#include "routing/multihash_router.h"

#include <algorithm>

#include "routing/hash_router.h"
#include "routing/hash_table.h"

namespace moe {

namespace {

// Mixed with the hash index i >= 1 into the seed of hash i ("MULTI" in the high bytes).
constexpr uint64_t k_multi_tag = 0x4D554C5449000000ull;

}  // namespace

std::unique_ptr<Router> make_multihash_router(ParamStore&, const std::string&, const MoeConfig& moe,
                                              const RouterSpec& spec) {
  MOE_CHECK(moe.hash_kind == hash_kind_name(HashKind::random), "moe.router = \"multihash\" draws its moe.hash_count "
            "hashes from moe.hash_seed: moe.hash_kind must be \"random\", not \"", moe.hash_kind, "\"");
  MOE_CHECK(moe.hash_table.empty(), "moe.router = \"multihash\" draws its moe.hash_count hashes from moe.hash_seed, "
            "but moe.hash_table = \"", moe.hash_table, "\" is one fixed table: leave moe.hash_table unset");
  MultiHashRouterOptions o;
  o.num_experts = spec.num_experts;
  o.vocab_size = spec.vocab_size;
  o.num_hashes = moe.hash_count;
  o.seed = moe.hash_seed;
  o.layer_index = spec.layer;
  o.per_layer = moe.hash_per_layer;
  return std::make_unique<MultiHashRouter>(o);
}

MultiHashRouter::MultiHashRouter(const MultiHashRouterOptions& o)
    : num_experts_(o.num_experts), vocab_size_(o.vocab_size), num_hashes_(o.num_hashes) {
  MOE_CHECK(num_experts_ >= 1, "multihash routing needs at least one expert, got ", num_experts_);
  MOE_CHECK(vocab_size_ >= 1, "multihash routing needs model.vocab_size >= 1, got ", vocab_size_);
  MOE_CHECK(num_hashes_ >= 1 && num_hashes_ <= num_experts_, "moe.hash_count = ", num_hashes_,
            " must be between 1 and the ", num_experts_, " experts of this MoE layer (each hash of a token picks a "
            "different expert)");
  seed_ = o.per_layer ? hash_layer_seed(o.seed, o.layer_index) : o.seed;
  const auto n = static_cast<size_t>(num_hashes_);
  table_.resize(static_cast<size_t>(vocab_size_) * n);
  std::vector<uint64_t> seeds(n, seed_);
  for (size_t i = 1; i < n; ++i) seeds[i] = hash_keyed(seed_, k_multi_tag ^ i);
  std::vector<char> used(static_cast<size_t>(num_experts_));
  for (int64_t v = 0; v < vocab_size_; ++v) {
    std::fill(used.begin(), used.end(), 0);
    for (size_t i = 0; i < n; ++i) {
      // The r-th expert hashes 0 .. i-1 left free, in index order.
      auto r = static_cast<int64_t>(hash_keyed(seeds[i], static_cast<uint64_t>(v)) %
                                    static_cast<uint64_t>(num_experts_ - static_cast<int64_t>(i)));
      int32_t e = 0;
      for (;; ++e) {
        if (used[static_cast<size_t>(e)]) continue;
        if (r == 0) break;
        --r;
      }
      used[static_cast<size_t>(e)] = 1;
      table_[static_cast<size_t>(v) * n + i] = e;
    }
  }
}

std::vector<int32_t> MultiHashRouter::experts_of(int32_t token) const {
  MOE_CHECK(token >= 0 && token < vocab_size_, name(), ": token id ", token, " is outside the vocabulary of ",
            vocab_size_, " tokens");
  const auto n = static_cast<size_t>(num_hashes_);
  auto first = table_.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(token) * n);
  return {first, first + static_cast<std::ptrdiff_t>(n)};
}

std::vector<int32_t> MultiHashRouter::expert_ids(int64_t num_tokens, const RouteInputs& in) const {
  // Row t is token first_token + t of the micro-batch (a tensor-parallel slice starts inside it).
  MOE_CHECK(in.tokens != nullptr, name(), " needs the tokens of the batch (RouteInputs::tokens), but none were given");
  MOE_CHECK(static_cast<int64_t>(in.tokens->size()) >= in.first_token + num_tokens, name(), ": ", in.tokens->size(),
            " tokens for ", num_tokens, " rows from token ", in.first_token);
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(num_tokens * num_hashes_));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int32_t token = (*in.tokens)[static_cast<size_t>(in.first_token + t)];
    MOE_CHECK(token >= 0 && token < vocab_size_, name(), ": token id ", token, " at row ", t,
              " is outside the vocabulary of ", vocab_size_, " tokens");
    const auto first = table_.begin() + static_cast<std::ptrdiff_t>(token) * num_hashes_;
    ids.insert(ids.end(), first, first + num_hashes_);
  }
  return ids;
}

Routing MultiHashRouter::route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const {
  MOE_CHECK(x.ndim() == 2, name(), ": x must be [T,d], got ", shape_str(x.shape()));
  const int64_t n = x.size(0), k = num_hashes_;
  Routing r;
  r.ids = Tensor::from_vector(expert_ids(n, inputs), {n, k}, DType::i32, x.device());
  r.weights = constant_weights(n, k, 1.0 / static_cast<double>(k), x);
  saved.routing = r;
  return r;
}

}  // namespace moe
