// The trainer's data set-up and checkpointed data state: specs from the config, the sampler,
// the checks on opening, and the comparison that keeps a resumed run on the same sample order.
#include "src/train/data_state.h"

#include <cstdio>

#include "src/data/epoch_sampler.h"
#include "src/util/check.h"
#include "src/util/log.h"

namespace moe {

namespace {

std::vector<data::DatasetSpec> specs_of(const std::string& path, const char* path_key,
                                        const std::vector<DataSource>& sources, const char* sources_key) {
  if (!path.empty()) return {data::DatasetSpec{path_key, {path}, 1.0}};
  std::vector<data::DatasetSpec> specs;
  for (size_t i = 0; i < sources.size(); ++i) {
    specs.push_back({std::string(sources_key) + "[" + std::to_string(i) + "]", sources[i].paths, sources[i].weight});
  }
  return specs;
}

std::string shard_list(const nlohmann::json& shards) {
  std::string out;
  for (const auto& shard : shards) out += (out.empty() ? "" : ", ") + shard.value("path", std::string("?"));
  return out;
}

}  // namespace

std::vector<data::DatasetSpec> train_dataset_specs(const DataConfig& data) {
  return specs_of(data.train_path, "data.train_path", data.train, "data.train");
}

std::vector<data::DatasetSpec> val_dataset_specs(const DataConfig& data) {
  return specs_of(data.val_path, "data.val_path", data.val, "data.val");
}

std::unique_ptr<data::TrainSampler> make_train_sampler(const data::TokenSplit& split, const DataConfig& config,
                                                       uint64_t seed, int64_t global_batch, int64_t seq_len) {
  if (config.sampling == "epochs") return std::make_unique<data::EpochSampler>(split, seed, global_batch, seq_len);
  MOE_CHECK(config.sampling == "random_windows", "data.sampling = '", config.sampling,
            "' is not epochs or random_windows");
  const std::vector<const data::TokenDataset*> shards = split.shards();
  MOE_CHECK(shards.size() == 1, "data.sampling = 'random_windows' draws from one shard, but ",
            split.datasets().front().key, " expands to ", shards.size(),
            " shards: use data.sampling = 'epochs' to read several");
  try {
    return std::make_unique<data::BatchSampler>(*shards.front(), seed, global_batch, seq_len);
  } catch (const Error& e) {
    throw Error(split.datasets().front().key + " " + e.what());
  }
}

void check_train_split(const data::TokenSplit& split, const Config& config) {
  split.check_ids_below(config.model.vocab_size);
}

void check_val_split(const data::TokenSplit& split, const Config& config, int64_t replicas, bool root,
                     int64_t window_seq_len) {
  split.check_ids_below(config.model.vocab_size);
  const std::string key = split.datasets().front().key;
  const int64_t seq = window_seq_len;  // the objective's windows (Trainer::window_seq_len)
  try {
    data::EvalIterator windows(split.shards(), config.train.micro_batch_size, seq, 0, 0, replicas);
    const int64_t asked = config.train.eval_batches * config.train.micro_batch_size * replicas;
    if (root && windows.num_windows() < asked) {
      log::warn("{} = {}{} holds {} evaluation windows of {} tokens, fewer than the {} that train.eval_batches "
                "asks for; evaluations use all of them", key, split.shards().front()->path(),
                split.shards().size() > 1 ? ", ..." : "", windows.num_windows(), seq, asked);
    }
  } catch (const Error& e) {
    throw Error((split.datasets().size() == 1 ? key : std::string("data.val")) + " " + e.what());
  }
}

std::string describe_training_data(const data::TokenSplit& split, const data::TrainSampler& sampler,
                                   const std::string& sampling) {
  const auto* epochs = dynamic_cast<const data::EpochSampler*>(&sampler);
  std::string out = "data (sampling " + sampling + "):";
  for (size_t d = 0; d < split.datasets().size(); ++d) {
    const data::Dataset& dataset = split.datasets()[d];
    char weight[32];
    std::snprintf(weight, sizeof(weight), "%g", dataset.weight);
    out += std::string(d ? ";" : "") + " " + dataset.key + " weight " + weight + ", " +
           std::to_string(dataset.shards.size()) + " shard" + (dataset.shards.size() == 1 ? "" : "s") + ", " +
           std::to_string(dataset.num_tokens()) + " tokens";
    if (epochs) out += ", " + std::to_string(epochs->num_samples(static_cast<int64_t>(d))) + " samples per epoch";
  }
  return out;
}

nlohmann::json trainer_data_state(const data::TokenSplit& split, const data::TrainSampler& sampler,
                                  const std::string& sampling, int64_t consumed_samples) {
  const auto* epochs = dynamic_cast<const data::EpochSampler*>(&sampler);
  const std::vector<double> reached = epochs ? epochs->epochs_after(consumed_samples) : std::vector<double>();
  nlohmann::json datasets = nlohmann::json::array();
  for (size_t d = 0; d < split.datasets().size(); ++d) {
    const data::Dataset& dataset = split.datasets()[d];
    nlohmann::json shards = nlohmann::json::array();
    for (const data::TokenDataset& shard : dataset.shards) {
      shards.push_back({{"path", shard.path()}, {"tokens", shard.size()}});
    }
    nlohmann::json entry = {{"key", dataset.key}, {"weight", dataset.weight}, {"shards", shards}};
    if (epochs) entry["epochs"] = reached[d];
    datasets.push_back(entry);
  }
  return {{"sampling", sampling},
          {"seq_len", sampler.seq_len()},
          {"consumed_samples", consumed_samples},
          {"datasets", datasets}};
}

void check_resume_data(const nlohmann::json& saved, const nlohmann::json& now, const std::string& checkpoint,
                       int64_t step) {
  if (step == 0) return;  // no batch drawn yet (moe upcycle): any data may start here
  const std::string sampling = now.value("sampling", std::string());
  const std::string refuse = "cannot resume from " + checkpoint + ": ";
  const std::string why = ": the sample order would change; restore the files or start a new train.run_dir";
  if (!saved.is_object()) {
    MOE_CHECK(sampling == "random_windows", refuse,
              "it records no data state, so its run drew random windows (the rule before data.sampling existed); "
              "resume it with data.sampling = \"random_windows\", or start a new train.run_dir");
    return;
  }
  MOE_CHECK(saved.value("sampling", std::string()) == sampling, refuse, "its run sampled by '",
            saved.value("sampling", std::string()), "', data.sampling is now '", sampling, "'");
  const nlohmann::json& was = saved["datasets"];
  const nlohmann::json& is = now["datasets"];
  MOE_CHECK(was.is_array() && was.size() == is.size(), refuse, "its run read ", was.is_array() ? was.size() : 0,
            " training datasets, the config now gives ", is.size(), why);
  for (size_t d = 0; d < is.size(); ++d) {
    const std::string key = is[d]["key"].get<std::string>();
    const nlohmann::json& old_shards = was[d]["shards"];
    const nlohmann::json& new_shards = is[d]["shards"];
    MOE_CHECK(old_shards.is_array() && old_shards.size() == new_shards.size(), refuse, key, " now has ",
              new_shards.size(), " shards (", shard_list(new_shards), "), its run read ",
              old_shards.is_array() ? old_shards.size() : 0, " (", shard_list(old_shards), ")", why);
    // Token counts, not paths: a copy of the data at another path (a node's local disk, each
    // rank's own copy) reads the same samples.
    for (size_t s = 0; s < new_shards.size(); ++s) {
      const int64_t tokens = new_shards[s]["tokens"].get<int64_t>();
      const int64_t old_tokens = old_shards[s].value("tokens", int64_t{-1});
      const std::string path = new_shards[s]["path"].get<std::string>();
      const std::string old_path = old_shards[s].value("path", std::string("?"));
      MOE_CHECK(old_tokens == tokens, refuse, key, " shard ", s, " ", path, " has ", tokens, " tokens, its run read ",
                old_tokens, " (", old_path, ")", why);
    }
  }
}

}  // namespace moe
