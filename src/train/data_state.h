// The trainer's data: the config's datasets as the data layer's specs, the sampler they select,
// the checks made when the files are opened, and the data state a checkpoint records and a resume compares.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/data/batch_sampler.h"
#include "src/data/token_split.h"

namespace moe {

// data.train_path (key "data.train_path") or the data.train entries ("data.train[i]"); empty
// when neither is set. The same for validation.
std::vector<data::DatasetSpec> train_dataset_specs(const DataConfig& data);
std::vector<data::DatasetSpec> val_dataset_specs(const DataConfig& data);

// data.sampling: "epochs" -> EpochSampler over the split; "random_windows" -> BatchSampler over
// its one shard (a split of several shards is an error naming the count).
std::unique_ptr<data::TrainSampler> make_train_sampler(const data::TokenSplit& split, const DataConfig& data,
                                                       uint64_t seed, int64_t global_batch, int64_t seq_len);

// The checks of a split when it is opened, so a bad file fails before the first step: every id
// below model.vocab_size; for validation, one evaluation window of window_seq_len + 1 tokens per
// data-parallel replica (a note on stderr, root only, when fewer windows than train.eval_batches
// asks for exist).
void check_train_split(const data::TokenSplit& split, const Config& config);
void check_val_split(const data::TokenSplit& split, const Config& config, int64_t replicas, bool root,
                     int64_t window_seq_len);

// One line for the start of a run: each dataset's key, weight, shards, tokens and (epochs) samples.
std::string describe_training_data(const data::TokenSplit& split, const data::TrainSampler& sampler,
                                   const std::string& sampling);

// What a checkpoint records about the data: the sampling rule, the samples consumed, and per
// dataset its key, weight, epochs reached and every shard's path and token count.
nlohmann::json trainer_data_state(const data::TokenSplit& split, const data::TrainSampler& sampler,
                                  const std::string& sampling, int64_t consumed_samples);
// Resuming `checkpoint` at `step`: the data it recorded (`saved`, null for checkpoints without one)
// must be the data now (`now`, from trainer_data_state), or the sample order would silently change:
// the rule, the datasets, each one's shard count and every shard's token count (paths may differ:
// a copy elsewhere reads the same samples). The error names the first difference.
void check_resume_data(const nlohmann::json& saved, const nlohmann::json& now, const std::string& checkpoint,
                       int64_t step);

}  // namespace moe
