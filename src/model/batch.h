// One micro-batch as the model runs it: the token ids on the host (as the sampler gave them)
// and on the model's device, the targets, and the flags of this forward pass.
#pragma once

#include <cstdint>
#include <vector>

#include "src/tensor/tensor.h"

namespace moe {

struct Batch {
  int64_t batch_size = 0;  // sequences of model.seq_len positions
  // The ids on the host, kept so that no forward reads them back from the device: hash routers
  // route on these (RouteInputs points at them).
  std::vector<int32_t> host_inputs;   // [B*S]
  std::vector<int32_t> host_targets;  // [B*S] ([B*Sd] for an encoder-decoder); empty when the batch has no targets
  Tensor inputs;   // i32[B*S] on the model's device: host_inputs
  Tensor targets;  // i32[B*S]: host_targets; negative = not counted in the loss; undefined = no loss
  // Encoder-decoder: the decoder's ids [B*Sd] (a start token, then the targets shifted right);
  // inputs are the encoder's. Empty / undefined for a single stack.
  std::vector<int32_t> host_decoder_inputs;
  Tensor decoder_inputs;
  bool training = true;        // noisy gating draws noise only in training
  uint64_t noise_seed = 0;     // distinct per (step, micro-batch) in training
  bool collect_stats = false;  // router entropy for the metrics (costs a host copy)
};

// A batch of batch_size sequences from host ids (targets empty: no loss), copied once to `device`.
Batch make_batch(std::vector<int32_t> inputs, std::vector<int32_t> targets, int64_t batch_size, Device device);

// An encoder-decoder batch: encoder ids [B*S], decoder ids [B*Sd] and targets [B*Sd] (or empty:
// no loss), copied once to `device`.
Batch make_seq2seq_batch(std::vector<int32_t> inputs, std::vector<int32_t> decoder_inputs, std::vector<int32_t> targets,
                         int64_t batch_size, Device device);

// Checks that the host ids are those of the device tensors (their counts; the values are not
// read back): the error names what is missing.
void check_host_ids(const Batch& batch);

// The document starts (ops.h doc_starts) of token ids [B*S], sequences of seq_len: a document
// ends with eos_id, so the token after an EOS begins a new one at its position, and a sequence's
// first token begins one at 0. [B*S] values in [0, seq_len).
std::vector<int32_t> document_starts(const std::vector<int32_t>& tokens, int64_t seq_len, int64_t eos_id);

}  // namespace moe
