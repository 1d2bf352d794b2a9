// Checkpoint writing and reading through safetensors and an atomic directory swap.
#include "src/train/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <set>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "src/io/atomic_dir.h"
#include "src/io/checksum_manifest.h"
#include "src/io/safetensors.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// A host copy in the master dtype (f32 on the GPU, f32/f64 on the CPU): exact, so a resume
// continues bit-identically.
Tensor host_copy(const Tensor& t) { return t.to(Device::cpu()); }

void load_into(Tensor target, const Tensor& host, const std::string& name, const std::string& file) {
  MOE_CHECK(host.shape() == target.shape(), "checkpoint ", file, ": '", name, "' has shape ", shape_str(host.shape()),
            " but the model expects ", shape_str(target.shape()));
  if (host.dtype() == target.dtype()) {
    target.copy_from(host);
  } else if (target.dtype() == DType::f64) {
    target.copy_from(Tensor::from_vector(host.to_vector<double>(), host.shape(), DType::f64));
  } else {
    target.copy_from(Tensor::from_vector(host.to_vector<float>(), host.shape(), DType::f32));
  }
}

// trainer_state.json's field `key`, required, its JSON type and range [lo, hi] checked so a bad
// value names the file and the field instead of surfacing a json.exception (or, as `{}` did,
// silently restarting at step 0 and overwriting the run's checkpoints).
template <typename T>
T state_field(const nlohmann::json& state, const char* key, T lo, T hi, const std::string& path) {
  MOE_CHECK(state.contains(key), "corrupt checkpoint ", path, ": field \"", key, "\" is missing");
  const nlohmann::json& value = state[key];
  bool fits = std::is_unsigned_v<T> ? value.is_number_unsigned() : value.is_number_integer();
  MOE_CHECK(fits, "corrupt checkpoint ", path, ": field \"", key, "\" is a JSON ", value.type_name(), ", expected ",
            std::is_unsigned_v<T> ? "a non-negative integer" : "an integer");
  // An unsigned JSON value above the signed range would wrap in get<int64_t>.
  const bool wraps = !std::is_unsigned_v<T> && value.is_number_unsigned() &&
                     value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  MOE_CHECK(!wraps && value.get<T>() >= lo && value.get<T>() <= hi, "corrupt checkpoint ", path, ": field \"", key,
            "\" = ", value.dump(), " is out of range [", lo, ", ", hi, "]");
  return value.get<T>();
}

}  // namespace

void check_finite_for_save(const std::string& dir, const std::string& name, const Tensor& t, int64_t step) {
  if (t.dtype() != DType::f32 && t.dtype() != DType::f64) return;
  const bool f32 = t.dtype() == DType::f32;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = f32 ? t.data_as<float>()[i] : t.data_as<double>()[i];
    MOE_CHECK(std::isfinite(v), "not saving checkpoint ", dir, ": '", name, "' holds ", v, " (element ", i,
              ") at step ", step, ": training diverged; lower optim.lr or check the data");
  }
}

void verify_staged_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, uint64_t>>& sizes,
                              int64_t step) {
  for (const auto& [file, expected] : sizes) {
    const fs::path path = fs::path(dir) / file;
    std::error_code error;
    const uint64_t size = fs::file_size(path, error);
    MOE_CHECK(!error, "checkpoint file ", path.string(), " is missing after writing: ", error.message(),
              "; the checkpoint is not committed");
    MOE_CHECK(size == expected && size > 0, "checkpoint file ", path.string(), " has ", size, " bytes after writing, ",
              expected, " were written (disk full?); the checkpoint is not committed");
    if (path.extension() == ".safetensors") read_safetensors_header(path);  // the header parses, sizes agree
    if (file == k_checksum_manifest) read_checksum_manifest(dir);             // the manifest parses
  }
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  std::ifstream in(state_path);
  nlohmann::json state = nlohmann::json::parse(in, nullptr, false);
  const bool step_ok = state.is_object() && state.contains("step") && state["step"].is_number_integer() &&
                       state["step"].get<int64_t>() == step;
  MOE_CHECK(step_ok, "checkpoint file ", state_path, " does not read back as the trainer state of step ", step,
            "; the checkpoint is not committed");
}

void write_checkpoint_tensors(const std::string& dir, const CheckpointTensors& tensors, const TrainerState& state,
                              const Config& config) {
  for (const auto* list : {&tensors.weights, &tensors.moments}) {
    for (const auto& [name, t] : *list) check_finite_for_save(dir, name, t, state.step);
  }
  AtomicDir out(dir);
  nlohmann::json trainer = {{"step", state.step}, {"seed", state.seed}, {"world_size", state.world_size}};
  if (state.data.is_object()) trainer["data"] = state.data;
  const std::string trainer_text = trainer.dump(2) + "\n", config_text = to_toml(config);
  // Every write is checked (AtomicFile: each write, fsync and close); the sizes are verified
  // again before the rename that commits the checkpoint. checksums.json records each file's
  // size and CRC-32C as written, for the loader to compare.
  ChecksumManifest manifest;
  manifest["model.safetensors"] =
      write_safetensors(out.path() / "model.safetensors", tensors.weights, {{"format", "moe-engine"}});
  manifest["optimizer.safetensors"] = write_safetensors(out.path() / "optimizer.safetensors", tensors.moments,
                                                        {{"step", std::to_string(state.step)}});
  manifest["trainer_state.json"] = write_file_atomically(out.path() / "trainer_state.json", trainer_text);
  manifest["config.toml"] = write_file_atomically(out.path() / "config.toml", config_text);
  std::vector<std::pair<std::string, uint64_t>> sizes;
  for (const auto& [file, digest] : manifest) sizes.emplace_back(file, digest.num_bytes);
  sizes.emplace_back(k_checksum_manifest, write_checksum_manifest(out.path(), manifest).num_bytes);
  verify_staged_checkpoint(out.path().string(), sizes, state.step);
  out.commit();
}

void write_checkpoint(const std::string& dir, const ParamStore& params, const AdamW& optimizer,
                      const TrainerState& state, const Config& config) {
  CheckpointTensors t;
  for (size_t i = 0; i < params.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const std::string& name = params.info(id).name;
    t.weights.emplace_back(name, host_copy(params.master(id)));
    t.moments.emplace_back(name + ".exp_avg", host_copy(optimizer.moment1(id)));
    t.moments.emplace_back(name + ".exp_avg_sq", host_copy(optimizer.moment2(id)));
  }
  write_checkpoint_tensors(dir, t, state, config);
}

namespace {

TrainerState parse_trainer_state(const std::string& state_text, const std::string& state_path) {
  nlohmann::json state_json;
  try {
    state_json = nlohmann::json::parse(state_text);
  } catch (const nlohmann::json::exception& e) {
    MOE_FAIL("corrupt checkpoint ", state_path, ": ", e.what());
  }
  MOE_CHECK(state_json.is_object(), "corrupt checkpoint ", state_path, ": not a JSON object but a JSON ",
            state_json.type_name());
  TrainerState state;
  // Steps up to 2^53 (exact in a double: the metrics and the skip record hold steps as doubles);
  // seeds below 2^63 as train.seed; any world size a job could have.
  state.step = state_field(state_json, "step", int64_t{0}, int64_t{1} << 53, state_path);
  state.seed = state_field(state_json, "seed", uint64_t{0}, (uint64_t{1} << 63) - 1, state_path);
  state.world_size = state_field(state_json, "world_size", int64_t{1}, int64_t{1} << 31, state_path);
  if (state_json.contains("data") && state_json["data"].is_object()) state.data = state_json["data"];
  return state;
}

}  // namespace

TrainerState read_trainer_state(const std::string& dir, bool verify) {
  const std::optional<ChecksumManifest> manifest = checkpoint_manifest(dir, verify);
  return parse_trainer_state(read_verified_text(dir, "trainer_state.json", "checkpoint state", manifest, verify),
                             dir + "/trainer_state.json");
}

CheckpointFiles read_checkpoint_files(const std::string& dir, bool with_optimizer, bool verify) {
  MOE_CHECK(fs::is_directory(dir), "checkpoint directory ", dir, " does not exist");
  CheckpointFiles files;
  files.dir = dir;
  const std::optional<ChecksumManifest> manifest = checkpoint_manifest(dir, verify);
  files.weights = open_verified_safetensors(dir, "model.safetensors", manifest, verify);
  if (with_optimizer) files.moments = open_verified_safetensors(dir, "optimizer.safetensors", manifest, verify);
  files.state = parse_trainer_state(read_verified_text(dir, "trainer_state.json", "checkpoint state", manifest, verify),
                                    dir + "/trainer_state.json");
  return files;
}

void CheckpointFiles::check_names(const std::set<std::string>& names) const {
  std::set<std::string> expected;  // "0 <weight>", "1 <moment>": weights sort first
  for (const std::string& name : names) {
    expected.insert("0 " + name);
    if (moments.is_open()) {
      expected.insert("1 " + name + ".exp_avg");
      expected.insert("1 " + name + ".exp_avg_sq");
    }
  }
  std::set<std::string> held;
  for (const SafetensorsEntry& e : weights.entries()) held.insert("0 " + e.name);
  for (const SafetensorsEntry& e : moments.entries()) held.insert("1 " + e.name);
  std::vector<std::string> missing, extra;
  for (const std::string& key : expected) if (!held.count(key)) missing.push_back(key);
  for (const std::string& key : held) if (!expected.count(key)) extra.push_back(key);
  if (missing.empty() && extra.empty()) return;
  auto list = [](const std::vector<std::string>& keys) {  // the first 8 names, then a count
    std::string out;
    for (size_t i = 0; i < keys.size() && i < 8; ++i) out += (i ? ", '" : "'") + keys[i].substr(2) + "'";
    if (keys.size() > 8) out += " and " + std::to_string(keys.size() - 8) + " more";
    return out;
  };
  std::string what = missing.empty() ? "" : std::to_string(missing.size()) + " tensor(s) missing (" + list(missing) + ")";
  if (!extra.empty()) {
    what += (what.empty() ? "" : "; ") + std::to_string(extra.size()) + " tensor(s) the model does not have (" +
            list(extra) + ")";
  }
  MOE_FAIL("checkpoint ", dir, " does not match the model: ", what,
           "; was it saved from another model shape (model.num_layers, moe.*)?");
}

Tensor CheckpointFiles::take(const ParamInfo& info, const std::string& name, bool from_moments) const {
  const MappedSafetensors& file = from_moments ? moments : weights;
  std::string path = dir + (from_moments ? "/optimizer.safetensors" : "/model.safetensors");
  const SafetensorsEntry* entry = file.find(name);
  MOE_CHECK(entry != nullptr, "checkpoint ", path, " has no tensor '", name, "'");
  const Shape& expected = info.is_split() ? info.full_shape : info.shape;
  // Weights and moments are saved in the master dtype: an integer dtype is a relabelled tensor.
  MOE_CHECK(entry->dtype == DType::f32 || entry->dtype == DType::f64 || entry->dtype == DType::bf16, "checkpoint ",
            path, ": '", name, "' has dtype ", dtype_name(entry->dtype),
            " but the model expects floating-point weights (F32, F64 or BF16)");
  MOE_CHECK(entry->shape == expected, "checkpoint ", path, ": '", name, "' has shape ", shape_str(entry->shape),
            " but the model expects ", shape_str(expected));
  if (info.is_row_shard()) return file.copy_rows(*entry, info.row_offset, info.row_offset + info.shape[0]);
  return local_part(info, file.copy(*entry));
}

TrainerState read_checkpoint(const std::string& dir, ParamStore& params, AdamW* optimizer, bool verify) {
  CheckpointFiles files = read_checkpoint_files(dir, optimizer != nullptr, verify);
  std::set<std::string> names;
  for (const ParamInfo& info : params.infos()) names.insert(info.name);
  files.check_names(names);
  for (size_t i = 0; i < params.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& info = params.info(id);
    params.load_master_from_host(id, files.take(info, info.name, false));
    if (optimizer) {
      load_into(optimizer->moment1(id), files.take(info, info.name + ".exp_avg", true), info.name, dir);
      load_into(optimizer->moment2(id), files.take(info, info.name + ".exp_avg_sq", true), info.name, dir);
    }
  }
  return files.state;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code error;
  if (!fs::is_directory(root, error)) return out;
  static const std::regex pattern("step_([0-9]{1,18})");
  for (const auto& entry : fs::directory_iterator(root)) {
    std::smatch m;
    std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, m, pattern)) {
      out.emplace_back(std::stoll(m[1]), entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string resolve_checkpoint(const std::string& run_dir, const std::string& resume) {
  if (resume != "latest") return resume;
  fs::path root = fs::path(run_dir) / "checkpoints";
  MOE_CHECK(fs::is_directory(root), "train.resume = \"latest\" but ", root.string(), " does not exist");
  auto steps = list_checkpoints(run_dir);
  MOE_CHECK(!steps.empty(), "train.resume = \"latest\" but ", root.string(), " holds no step_<N> checkpoint");
  return steps.back().second;
}

std::string resolve_init_from(const std::string& path, const std::string& run_dir) {
  MOE_CHECK(fs::is_directory(path), "train.init_from = \"", path, "\" is not a directory");
  std::string dir = path;
  if (fs::is_directory(fs::path(path) / "checkpoints")) {
    auto steps = list_checkpoints(path);
    MOE_CHECK(!steps.empty(), "train.init_from = \"", path, "\" is a run directory without a step_<N> checkpoint");
    dir = steps.back().second;
  }
  // A fresh run clears its run directory's checkpoints (train.overwrite): not the ones it starts from.
  const std::string inside = fs::weakly_canonical(dir).string(), run = fs::weakly_canonical(run_dir).string();
  MOE_CHECK(inside != run && inside.rfind(run + "/", 0) != 0, "train.init_from = \"", path, "\" lies inside "
            "train.run_dir = \"", run_dir, "\", which a fresh run clears: start from a checkpoint outside it");
  return dir;
}

}  // namespace moe
