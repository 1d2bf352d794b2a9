// The training objective: how a batch's inputs and targets are built from sampled token
// windows, which attention mask the model uses, and which positions count in the loss.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "src/data/batch_sampler.h"
#include "src/model/attention.h"
#include "src/model/batch.h"

namespace moe {

// model.objective. causal_lm: next-token prediction (GPT). A new objective (masked LM, span
// corruption) is a kind here, a class in objective.cpp and its name in config validation.
enum class ObjectiveKind { causal_lm };
const char* objective_name(ObjectiveKind kind);
// The kind of a model.objective value; an unknown name is an error naming the key.
ObjectiveKind objective_kind(const std::string& name);

class Objective {
 public:
  virtual ~Objective() = default;
  virtual ObjectiveKind kind() const = 0;
  // The mask of the model's self-attention.
  virtual AttentionMask attention_mask() const = 0;
  // windows (rows x (seq_len + 1) tokens) -> inputs, targets [rows * seq_len] on the host. A
  // negative target marks a position that does not count in the loss (the loss mask).
  virtual void build(const data::TokenWindows& windows, std::vector<int32_t>& inputs,
                     std::vector<int32_t>& targets) const = 0;
  // Positions of a sequence of seq_len that count in the loss: the loss gradient is the token
  // loss sum over micro_batch * grad_accum * loss_positions (docs/decisions.md, Training).
  virtual int64_t loss_positions(int64_t seq_len) const = 0;

  // The micro-batch of these windows on `device`, host ids kept. A token id outside
  // [0, vocab_size) is an error naming model.vocab_size.
  Batch make_batch(const data::TokenWindows& windows, int64_t vocab_size, Device device) const;
};

// The objective of this kind.
std::unique_ptr<Objective> make_objective(ObjectiveKind kind);

}  // namespace moe
