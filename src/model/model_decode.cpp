// KV-cached generation: prefill writes the keys and values of a full forward into a per-block
// cache; each decode step then runs one new token per sequence against it (Model, model.h).
#include <algorithm>

#include "src/config/router_kinds.h"
#include "src/model/model.h"
#include "src/model/vocab_parallel.h"
#include "src/nn/linear.h"
#include "src/ops/kv_cache_ops.h"

namespace moe {

namespace {

// Hash kinds that route a token on its position, its neighbours or its target: not one token alone.
bool hash_reads_sequence(const std::string& kind) {
  return kind == "position" || kind == "bigram" || kind == "previous_token" || kind == "oracle";
}

Tensor i32_tensor(const std::vector<int32_t>& host, Device device) {
  return Tensor::from_vector(host, {static_cast<int64_t>(host.size())}, DType::i32, device);
}

}  // namespace

KvCache Model::make_kv_cache(int64_t batch) const {
  check_generation();
  MOE_CHECK(batch >= 1, "a KV cache needs at least one sequence, got batch ", batch);
  MOE_CHECK(!config_.reset_positions && !config_.reset_attention,
            "KV-cached generation does not support model.reset_positions / model.reset_attention (generate "
            "--no-cache runs the full-window path)");
  for (const RouterKind* kind : router_kinds_in_use(moe_config_)) {
    MOE_CHECK(kind->token_choice, "KV-cached generation routes each new token alone, but router '", kind->name,
              "' lets experts choose among all tokens (generate --no-cache runs the full-window path)");
    MOE_CHECK(!kind->hashed || !hash_reads_sequence(moe_config_.hash_kind),
              "KV-cached generation routes each new token alone, but moe.hash_kind = '", moe_config_.hash_kind,
              "' routes on the token's position, neighbours or target (generate --no-cache runs the full-window path)");
  }
  KvCache cache;
  cache.batch = batch;
  cache.max_len = config_.seq_len;
  for (const auto& block : blocks_) {
    const Attention& attn = block->attention();
    const Shape shape{batch, attn.local_kv_heads(), cache.max_len, attn.head_dim()};
    cache.k.push_back(Tensor::zeros(shape, store_.compute_dtype(), store_.device()));
    cache.v.push_back(Tensor::zeros(shape, store_.compute_dtype(), store_.device()));
  }
  return cache;
}

Tensor Model::prefill(const std::vector<int32_t>& tokens, KvCache& cache) const {
  check_generation();
  const int64_t seq = config_.seq_len;
  MOE_CHECK(static_cast<int64_t>(tokens.size()) == cache.batch * seq, "prefill: ", tokens.size(),
            " tokens are not the cache's ", cache.batch, " sequences of ", seq);
  ModelSaved saved;
  Batch batch = make_batch(tokens, {}, cache.batch, store_.device());
  batch.training = false;
  head_forward(run_blocks(embed(batch.inputs, Tensor(), config_.seq_len), batch, saved, 0, blocks_.size()), saved);
  std::vector<int32_t> positions(tokens.size());
  for (size_t n = 0; n < positions.size(); ++n) positions[n] = static_cast<int32_t>(static_cast<int64_t>(n) % seq);
  const Tensor where = i32_tensor(positions, store_.device());
  for (size_t i = 0; i < blocks_.size(); ++i) {
    ops::kv_cache_write(saved.blocks[i].attn.k, where, cache.k[i]);  // k after rope, as the forward saved it
    ops::kv_cache_write(saved.blocks[i].attn.v, where, cache.v[i]);
  }
  return saved.logits;
}

Tensor Model::decode_step(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                          KvCache& cache) const {
  check_generation();
  MOE_CHECK(static_cast<int64_t>(tokens.size()) == cache.batch && positions.size() == tokens.size(),
            "decode_step: ", tokens.size(), " tokens and ", positions.size(), " positions for a cache of ",
            cache.batch, " sequences");
  std::vector<int32_t> lengths(positions.size());
  for (size_t b = 0; b < positions.size(); ++b) {
    MOE_CHECK(positions[b] >= 0 && positions[b] < cache.max_len, "decode_step: sequence ", b, " at position ",
              positions[b], " is outside the cache of ", cache.max_len, " positions");
    lengths[b] = positions[b] + 1;
  }
  const Tensor ids = i32_tensor(tokens, store_.device()), where = i32_tensor(positions, store_.device());
  const Tensor counts = i32_tensor(lengths, store_.device());
  acquire("embed");
  Tensor x = vocab_parallel_embedding(ids, store_.param(tokens_), config_.vocab_size, tp_.comm);
  if (positions_ >= 0) {
    Tensor rows = empty_like(x), sum = empty_like(x);
    ops::gather_rows(store_.param(positions_), where, rows);
    ops::add(x, rows, sum);
    x = sum;
  }
  release("embed");
  // Each row is one sequence's newest token: routers see it alone (a sequence of one).
  RouteInputs route{&tokens, nullptr, 1, false, 0};
  for (size_t i = 0; i < blocks_.size(); ++i) {
    acquire(block_unit(i));
    x = blocks_[i]->decode(x, route, where, counts, cache.k[i], cache.v[i]);
    release(block_unit(i));
  }
  ModelSaved saved;
  head_forward(x, saved);
  return saved.logits;
}

}  // namespace moe
