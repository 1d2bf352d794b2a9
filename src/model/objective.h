// The training objective: how a batch's inputs and targets are built from sampled token
// windows, which attention mask the model uses, and which positions count in the loss.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/data/batch_sampler.h"
#include "src/model/attention.h"
#include "src/model/batch.h"

namespace moe {

namespace data {
class Tokenizer;
}

// model.objective. causal_lm: next-token prediction (GPT); masked_lm: BERT's masked language
// model (bidirectional); span_corruption: T5's span corruption (an encoder-decoder). A new objective is a kind here, a class in its own file, a case in
// make_objective and its name in config validation (docs/objectives.md).
enum class ObjectiveKind { causal_lm, masked_lm, span_corruption };
const char* objective_name(ObjectiveKind kind);
// The kind of a model.objective value; an unknown name is an error naming the key.
ObjectiveKind objective_kind(const std::string& name);

// Special token ids an objective writes into its inputs (-1: none), found by name in the
// tokenizer (`moe tokenize --special-tokens` reserves them).
struct SpecialTokens {
  int32_t mask = -1;  // [MASK]
  int32_t cls = -1;   // [CLS]
  int32_t sep = -1;   // [SEP]
  std::vector<int32_t> sentinels;  // <extra_id_0>, <extra_id_1>, ...: those the objective asks for
};

// What an objective's construction takes besides its kind.
struct ObjectiveOptions {
  ObjectiveConfig rates;    // [objective]
  SpecialTokens tokens;
  int64_t vocab_size = 0;   // random replacement tokens are drawn from [0, vocab_size)
  uint64_t seed = 0;        // train.seed: with the windows' keys, every random choice
  int64_t seq_len = 0;          // model.seq_len (0: unknown, as in the model's default objective)
  int64_t decoder_seq_len = 0;  // model.decoder_seq_len (encoder-decoder)
  // model.eos_id: where documents end (next-sentence prediction's pairs) and what ends a span-
  // corruption target
  int32_t eos_id = 2;
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual ObjectiveKind kind() const = 0;
  // The mask of the model's self-attention.
  virtual AttentionMask attention_mask() const = 0;
  // Whether evaluation reports the accuracy of its predictions (masked LM: of the masked tokens).
  virtual bool reports_accuracy() const { return false; }
  // Next-sentence prediction (masked LM with objective.nsp): the windows need partner windows
  // (data::add_partner_windows) and the model a sentence-pair head on the first position.
  virtual bool predicts_next_sentence() const { return false; }
  // Special tokens it needs, by name ("[MASK]"); objective_options finds their ids.
  virtual std::vector<std::string> special_tokens() const { return {}; }
  // windows (rows x (seq_len + 1) tokens) -> inputs, targets [rows * seq_len] on the host. A
  // negative target marks a position that does not count in the loss (the loss mask). Random
  // choices come from the windows' keys (TokenWindows::keys) and the seed only.
  virtual void build(const data::TokenWindows& windows, std::vector<int32_t>& inputs,
                     std::vector<int32_t>& targets) const = 0;
  // The sampled windows' seq_len (TokenWindows: windows of it + 1 tokens) for a model of seq_len
  // positions: seq_len, except where the objective reads longer raw windows (span corruption).
  virtual int64_t window_seq_len(int64_t seq_len) const { return seq_len; }
  // Encoder-decoder objectives: the decoder's ids of targets [rows * Sd] (a start token, then the
  // targets shifted right); empty for single-stack objectives (make_batch uses it).
  virtual std::vector<int32_t> decoder_inputs(const std::vector<int32_t>& targets) const {
    (void)targets;
    return {};
  }
  // Positions of a sequence of seq_len that count in the loss: the loss gradient is the token
  // loss sum over micro_batch * grad_accum * loss_positions (docs/decisions.md, Training).
  virtual int64_t loss_positions(int64_t seq_len) const = 0;

  // The micro-batch of these windows on `device`, host ids kept. A token id outside
  // [0, vocab_size) is an error naming model.vocab_size.
  Batch make_batch(const data::TokenWindows& windows, int64_t vocab_size, Device device) const;
};

// The objective of this kind.
std::unique_ptr<Objective> make_objective(ObjectiveKind kind, const ObjectiveOptions& options = {});

// The special tokens config's objective needs, by name (empty: none, no tokenizer read).
std::vector<std::string> objective_special_tokens(const Config& config);

// The options of config's objective: [objective], train.seed, model.vocab_size, and the ids of
// the special tokens it needs, found by name in `tokenizer` (an error names a missing piece).
ObjectiveOptions objective_options(const Config& config, const data::Tokenizer* tokenizer);

}  // namespace moe
