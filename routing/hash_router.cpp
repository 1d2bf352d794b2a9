// Hash routing: expert ids computed on the host from the token ids (or positions) and uploaded
// with unit weights; the tables come from `moe hash-table` files or the seeded random table.
#include "routing/hash_router.h"

#include <utility>

#include "src/ops/ops.h"

namespace moe {

namespace {

// "prev" of the first token of a sequence in the bigram hash; no token id is this large.
constexpr uint64_t k_bigram_sentinel = 0xFFFFFFFFull;

}  // namespace

std::unique_ptr<Router> make_hash_router(ParamStore&, const std::string&, const MoeConfig& moe,
                                         const RouterSpec& spec) {
  HashRouterOptions h;
  h.kind = hash_kind_from_name(moe.hash_kind);
  h.num_experts = spec.num_experts;
  h.vocab_size = spec.vocab_size;
  h.table_path = moe.hash_table;
  h.seed = moe.hash_seed;
  h.layer_index = spec.layer;
  h.per_layer = moe.hash_per_layer;
  h.allow_oracle = moe.hash_allow_oracle;
  return std::make_unique<HashRouter>(h);
}

HashRouter::HashRouter(const HashRouterOptions& options) { init(options, nullptr); }

HashRouter::HashRouter(const HashRouterOptions& options, std::shared_ptr<const HashTable> table) {
  MOE_CHECK(table != nullptr, "HashRouter: the shared hash table is null");
  init(options, std::move(table));
}

void HashRouter::init(const HashRouterOptions& o, std::shared_ptr<const HashTable> table) {
  kind_ = o.kind;
  const char* kind = hash_kind_name(kind_);
  num_experts_ = o.num_experts;
  vocab_size_ = o.vocab_size;
  MOE_CHECK(num_experts_ >= 1, "hash routing needs at least one expert, got ", num_experts_);
  MOE_CHECK(vocab_size_ >= 1, "hash routing needs model.vocab_size >= 1, got ", vocab_size_);
  MOE_CHECK(kind_ != HashKind::oracle || o.allow_oracle,
            "the future-token oracle hash routes on the target token and leaks the answer: set "
            "moe.hash_allow_oracle = true to run it as an upper-bound probe");
  const bool has_table = table != nullptr || !o.table_path.empty();
  MOE_CHECK(hash_kind_uses_token_table(kind_) || !has_table, "moe.hash_kind = \"", kind,
            "\" uses no token table, but moe.hash_table = \"", o.table_path, "\" is set");
  MOE_CHECK(!hash_kind_needs_table_file(kind_) || has_table, "moe.hash_kind = \"", kind,
            "\" needs moe.hash_table (build it with `moe hash-table --kind ", kind, "`)");
  MOE_CHECK(!(o.per_layer && has_table), "moe.hash_per_layer = true gives every layer its own seeded hash, but the '",
            kind, "' table from moe.hash_table is one fixed table: leave moe.hash_per_layer = false");
  seed_ = o.per_layer ? hash_layer_seed(o.seed, o.layer_index) : o.seed;
  if (!hash_kind_uses_token_table(kind_)) return;

  table_name_ = o.table_path.empty() ? std::string("(in memory)") : o.table_path;
  if (table == nullptr && !o.table_path.empty()) table = std::make_shared<const HashTable>(load_hash_table(o.table_path));
  if (table == nullptr) {
    table_name_ = "(random, seed " + std::to_string(seed_) + ")";
    table = std::make_shared<const HashTable>(build_random_hash_table(vocab_size_, num_experts_, seed_));
  }
  check_hash_table(*table, "hash table " + table_name_);
  MOE_CHECK(table->vocab_size == vocab_size_, "hash table ", table_name_, " is for a vocabulary of ", table->vocab_size,
            " tokens but model.vocab_size is ", vocab_size_);
  MOE_CHECK(table->num_experts == num_experts_, "hash table ", table_name_, " routes to ", table->num_experts,
            " experts but this MoE layer has ", num_experts_);
  // A file table of one construction named as another kind is almost surely the wrong file;
  // random, previous_token and oracle may look tokens up in any table.
  MOE_CHECK(!hash_kind_needs_table_file(kind_) || table->kind == kind_, "hash table ", table_name_, " was built as '",
            hash_kind_name(table->kind), "' but moe.hash_kind is \"", kind, "\"");
  table_ = std::move(table);
}

void HashRouter::check_token(int32_t token, int64_t row) const {
  MOE_CHECK(token >= 0 && token < vocab_size_, name(), ": token id ", token, " at row ", row,
            " is outside the hash table (vocabulary of ", vocab_size_, " tokens)");
}

int32_t HashRouter::table_expert(int32_t token, int64_t row) const {
  check_token(token, row);
  return table_->table[static_cast<size_t>(token)];
}

std::vector<int32_t> HashRouter::position_experts(int64_t seq_len) const {
  MOE_CHECK(seq_len >= 1, "position hashing needs seq_len >= 1, got ", seq_len);
  std::vector<int64_t> perm(static_cast<size_t>(seq_len));
  for (int64_t i = 0; i < seq_len; ++i) perm[i] = i;
  for (int64_t i = seq_len - 1; i >= 1; --i) {
    auto j = static_cast<int64_t>(hash_keyed(seed_, static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  std::vector<int32_t> experts(static_cast<size_t>(seq_len));
  for (int64_t p = 0; p < seq_len; ++p) experts[p] = static_cast<int32_t>(perm[p] % num_experts_);
  return experts;
}

std::vector<int32_t> HashRouter::expert_ids(int64_t num_tokens, const RouteInputs& in) const {
  // Row t is token g = first_token + t of the micro-batch, at position g % seq_len.
  const int64_t n = num_tokens, s = in.seq_len, first = in.first_token;
  const bool by_sequence = kind_ == HashKind::position || kind_ == HashKind::bigram || kind_ == HashKind::previous_token;
  if (by_sequence) {
    // A tensor-parallel slice of the micro-batch's tokens may start or end inside a sequence:
    // its positions count from the micro-batch's start.
    const bool slice = first > 0 || (in.tokens != nullptr && static_cast<int64_t>(in.tokens->size()) > n);
    MOE_CHECK(s >= 1 && (slice || n % s == 0), name(),
              " needs whole sequences: ", n, " rows are not a multiple of seq_len ", s);
  }
  const bool needs_tokens = kind_ != HashKind::position && kind_ != HashKind::oracle;
  auto check_ids = [&](const std::vector<int32_t>* ids, const char* what) {
    MOE_CHECK(ids != nullptr, name(), " needs the ", what, " of the batch (RouteInputs::", what, "), but none were given");
    MOE_CHECK(static_cast<int64_t>(ids->size()) >= first + n, name(), ": ", ids->size(), " ", what, " for ", n,
              " rows from token ", first);
  };
  if (needs_tokens) check_ids(in.tokens, "tokens");
  if (kind_ == HashKind::oracle) {
    MOE_CHECK(in.targets != nullptr, "the future-token oracle hash routes on the target tokens, but this forward pass "
                                     "has none (RouteInputs::targets; evaluation without targets, generation)");
    check_ids(in.targets, "targets");
  }
  auto token = [&](int64_t g) { return (*in.tokens)[static_cast<size_t>(g)]; };

  std::vector<int32_t> ids(static_cast<size_t>(n));
  switch (kind_) {
    case HashKind::random:
    case HashKind::balanced:
    case HashKind::clustering:
    case HashKind::dispersed:
      for (int64_t t = 0; t < n; ++t) ids[t] = table_expert(token(first + t), t);
      break;
    case HashKind::previous_token:
      for (int64_t t = 0, g = first; t < n; ++t, ++g) ids[t] = table_expert(token(g % s == 0 ? g : g - 1), t);
      break;
    case HashKind::oracle:
      for (int64_t t = 0, g = first; t < n; ++t, ++g) {
        int32_t target = (*in.targets)[static_cast<size_t>(g)];
        if (target >= 0) {
          ids[t] = table_expert(target, t);
        } else {
          check_ids(in.tokens, "tokens");  // an ignored target routes by the input token
          ids[t] = table_expert(token(g), t);
        }
      }
      break;
    case HashKind::position: {
      std::vector<int32_t> by_position = position_experts(s);
      for (int64_t t = 0; t < n; ++t) ids[t] = by_position[static_cast<size_t>((first + t) % s)];
      break;
    }
    case HashKind::bigram:
      for (int64_t t = 0, g = first; t < n; ++t, ++g) {
        int32_t current = token(g);
        check_token(current, t);
        uint64_t prev = g % s == 0 ? k_bigram_sentinel : static_cast<uint64_t>(token(g - 1));
        uint64_t key = (prev << 32) | static_cast<uint64_t>(current);
        ids[t] = static_cast<int32_t>(hash_keyed(seed_, key) % static_cast<uint64_t>(num_experts_));
      }
      break;
  }
  return ids;
}

Tensor constant_weights(int64_t rows, int64_t cols, double value, const Tensor& like) {
  const DType accum = ops::accum_dtype(like.dtype());
  const auto n = static_cast<size_t>(rows * cols);
  if (accum == DType::f64) {
    return Tensor::from_vector(std::vector<double>(n, value), {rows, cols}, accum, like.device());
  }
  return Tensor::from_vector(std::vector<float>(n, static_cast<float>(value)), {rows, cols}, accum, like.device());
}

Routing HashRouter::route(const Tensor& x, const RouteInputs& inputs, RouterSaved& saved) const {
  MOE_CHECK(x.ndim() == 2, name(), ": x must be [T,d], got ", shape_str(x.shape()));
  const int64_t n = x.size(0);
  Routing r;
  r.ids = Tensor::from_vector(expert_ids(n, inputs), {n, 1}, DType::i32, x.device());
  r.weights = constant_weights(n, 1, 1.0, x);
  saved.routing = r;
  return r;
}

}  // namespace moe
