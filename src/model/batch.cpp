// Batches: host ids copied once to the device, and the check that every batch carries its host
// ids (a forward never copies token ids device -> host).
#include "src/model/batch.h"

#include <utility>

namespace moe {

Batch make_batch(std::vector<int32_t> inputs, std::vector<int32_t> targets, int64_t batch_size, Device device) {
  const auto n = static_cast<int64_t>(inputs.size());
  MOE_CHECK(batch_size > 0 && n % batch_size == 0, "batch: ", n, " token ids are not ", batch_size,
            " sequences of equal length");
  MOE_CHECK(targets.empty() || targets.size() == inputs.size(), "batch: ", targets.size(), " targets for ", n,
            " inputs");
  Batch b;
  b.batch_size = batch_size;
  b.inputs = Tensor::from_vector(inputs, {n}, DType::i32, device);
  if (!targets.empty()) b.targets = Tensor::from_vector(targets, {n}, DType::i32, device);
  b.host_inputs = std::move(inputs);
  b.host_targets = std::move(targets);
  return b;
}

Batch make_seq2seq_batch(std::vector<int32_t> inputs, std::vector<int32_t> decoder_inputs, std::vector<int32_t> targets,
                         int64_t batch_size, Device device) {
  const auto n = static_cast<int64_t>(decoder_inputs.size());
  MOE_CHECK(batch_size > 0 && n > 0 && n % batch_size == 0, "batch: ", n, " decoder ids are not ", batch_size,
            " sequences of equal length");
  MOE_CHECK(targets.empty() || targets.size() == decoder_inputs.size(), "batch: ", targets.size(), " targets for ", n,
            " decoder ids");
  Batch b = make_batch(std::move(inputs), {}, batch_size, device);
  b.decoder_inputs = Tensor::from_vector(decoder_inputs, {n}, DType::i32, device);
  if (!targets.empty()) b.targets = Tensor::from_vector(targets, {n}, DType::i32, device);
  b.host_decoder_inputs = std::move(decoder_inputs);
  b.host_targets = std::move(targets);
  return b;
}

void check_host_ids(const Batch& batch) {
  const int64_t num_decoder = batch.decoder_inputs.defined() ? batch.decoder_inputs.numel() : 0;
  MOE_CHECK(static_cast<int64_t>(batch.host_decoder_inputs.size()) == num_decoder, "batch: ",
            batch.host_decoder_inputs.size(), " host decoder ids for ", num_decoder,
            " device ids (make batches with make_seq2seq_batch, which keeps the host ids)");
  MOE_CHECK(static_cast<int64_t>(batch.host_inputs.size()) == batch.inputs.numel(), "batch: ",
            batch.host_inputs.size(), " host token ids for ", batch.inputs.numel(),
            " device ids (make batches with make_batch, which keeps the host ids)");
  const int64_t num_targets = batch.targets.defined() ? batch.targets.numel() : 0;
  MOE_CHECK(static_cast<int64_t>(batch.host_targets.size()) == num_targets, "batch: ", batch.host_targets.size(),
            " host targets for ", num_targets, " device targets (make batches with make_batch, which keeps the "
            "host ids)");
}

std::vector<int32_t> document_starts(const std::vector<int32_t>& tokens, int64_t seq_len, int64_t eos_id) {
  const auto n = static_cast<int64_t>(tokens.size());
  MOE_CHECK(seq_len > 0 && n % seq_len == 0, "document starts: ", n, " token ids are not sequences of ", seq_len);
  std::vector<int32_t> starts(tokens.size());
  for (int64_t t = 0; t < n; ++t) {
    const int64_t i = t % seq_len;
    const size_t at = static_cast<size_t>(t);
    starts[at] = i == 0 ? 0 : tokens[at - 1] == eos_id ? static_cast<int32_t>(i) : starts[at - 1];
  }
  return starts;
}

}  // namespace moe
