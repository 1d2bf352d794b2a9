// Export to HF: each engine parameter split back into its HF tensors (the inverse of import's
// assembly), written with the config.json of the target family in one safetensors file.
#include "src/tools/hf_export.h"

#include <filesystem>
#include <fstream>

#include "src/io/atomic_dir.h"
#include "src/io/checksum_manifest.h"
#include "src/io/safetensors.h"
#include "src/train/checkpoint.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// The HF tensors of one engine tensor t (see HfTensorMap); widths: each part's column count.
void split(const HfTensorMap& map, const Tensor& t, std::map<std::string, HfTensor>& out) {
  const std::vector<float> values = t.to_vector<float>();
  const Shape& s = t.shape();
  const size_t first_dim = map.stacked ? 1 : 0;
  MOE_CHECK(s.size() >= first_dim + 1 && (!map.stacked || s[0] == static_cast<int64_t>(map.slices.size())),
            "checkpoint tensor '", map.engine, "' has shape ", shape_str(s), ", not what the config implies");
  // A vector (norm gain, bias) is one row: its parts (a GLU bias's gate | up) are column ranges.
  const bool vector = s.size() == first_dim + 1;
  const int64_t rows = vector ? 1 : s[first_dim], cols = vector ? s[first_dim] : s[first_dim + 1];
  for (size_t e = 0; e < map.slices.size(); ++e) {
    const auto& parts = map.slices[e];
    const int64_t width = cols / static_cast<int64_t>(parts.size());
    MOE_CHECK(width * static_cast<int64_t>(parts.size()) == cols, "checkpoint tensor '", map.engine, "' has ", cols,
              " columns, not ", parts.size(), " equal parts");
    const size_t base = e * static_cast<size_t>(rows * cols);
    for (size_t p = 0; p < parts.size(); ++p) {
      HfTensor h;
      if (vector) {
        h.shape = {width};
      } else {
        h.shape = map.transpose ? std::vector<int64_t>{width, rows} : std::vector<int64_t>{rows, width};
      }
      h.values.resize(static_cast<size_t>(rows * width));
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < width; ++j) {
          const size_t dst = static_cast<size_t>(map.transpose ? j * rows + i : i * width + j);
          h.values[dst] = values[base + static_cast<size_t>(i * cols + static_cast<int64_t>(p) * width + j)];
        }
      }
      out[parts[p]] = std::move(h);
    }
  }
}

nlohmann::json read_base(const fs::path& path) {
  if (!fs::is_regular_file(path)) return nullptr;
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  MOE_CHECK(j.is_object(), path.string(), " is not a JSON object");
  return j;
}

}  // namespace

HfExportResult export_hf(const std::string& from, const std::string& out_dir, const HfExportOptions& options) {
  MOE_CHECK(fs::is_directory(from), "convert --to-hf ", from, " is not a directory");
  MOE_CHECK(!out_dir.empty(), "convert --out is empty");
  MOE_CHECK(!fs::exists(out_dir) || (fs::is_directory(out_dir) && fs::is_empty(out_dir)), "convert --out ", out_dir,
            " exists and is not empty: refusing to write a Hugging Face directory over it");
  HfExportResult result;
  const bool is_checkpoint = fs::is_regular_file(fs::path(from) / "model.safetensors");
  result.checkpoint_dir = is_checkpoint ? from : resolve_checkpoint(from, "latest");
  MOE_CHECK(fs::is_regular_file(fs::path(result.checkpoint_dir) / "config.toml"), "convert --to-hf: ",
            result.checkpoint_dir, " has no config.toml");
  const Config config = load_config((fs::path(result.checkpoint_dir) / "config.toml").string());
  // A checkpoint directory sits at <run_dir>/checkpoints/step_<N>: the run's hf_config.json is two levels up.
  const fs::path run_dir = is_checkpoint ? fs::path(from).parent_path().parent_path() : fs::path(from);
  const nlohmann::json base = read_base(run_dir / "hf_config.json");
  result.family = options.arch.empty() ? default_export_family(config, base) : hf_family_from_name(options.arch);
  std::string dtype = options.dtype;
  if (dtype.empty() && base.is_object()) dtype = base.value("dtype", base.value("torch_dtype", std::string()));
  result.dtype = hf_dtype_from_name(dtype.empty() ? "float32" : dtype);
  const nlohmann::json hf_config = hf_config_from_engine(config, result.family, base, hf_dtype_torch_name(result.dtype));

  const SafetensorsFile weights =
      read_verified_safetensors(result.checkpoint_dir, "model.safetensors", checkpoint_manifest(result.checkpoint_dir, true), true);
  std::map<std::string, HfTensor> hf;
  size_t used = 0;
  for (const HfTensorMap& map : hf_tensor_maps(config, result.family)) {
    auto it = weights.tensors.find(map.engine);
    MOE_CHECK(it != weights.tensors.end(), "checkpoint ", result.checkpoint_dir, " has no '", map.engine, "'");
    split(map, it->second, hf);
    ++used;
  }
  // Every other parameter (an expert bias, a noise gate) belongs to a feature refused above.
  MOE_CHECK(used == weights.tensors.size(), "checkpoint ", result.checkpoint_dir, " holds ", weights.tensors.size(),
            " tensors, of which ", used, " have a place in ", hf_family_name(result.family));
  if (result.family == HfFamily::gpt2) gpt2_fuse_qkv(hf);
  for (const std::string& name : hf_zero_tensors(config, result.family)) {
    const std::string proj = name.substr(0, name.size() - 5) + ".weight";  // ".bias" -> ".weight"
    hf[name] = HfTensor{{hf.at(proj).shape[0]}, result.dtype, std::vector<float>(static_cast<size_t>(hf.at(proj).shape[0]))};
  }
  fs::create_directories(out_dir);
  write_hf_tensors(fs::path(out_dir) / "model.safetensors", hf, result.dtype);
  write_file_atomically(fs::path(out_dir) / "config.json", hf_config.dump(2) + "\n");
  result.num_tensors = hf.size();
  return result;
}

}  // namespace moe
