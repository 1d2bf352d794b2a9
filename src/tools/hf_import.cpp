// Import of HF checkpoints: each engine parameter assembled from its HF tensors (transposed,
// gate and up side by side, experts stacked), checked against a Model built from the config.
#include "src/tools/hf_import.h"

#include <filesystem>
#include <fstream>
#include <set>

#include "src/io/atomic_dir.h"
#include "src/model/model.h"
#include "src/train/checkpoint.h"
#include "src/train/optimizer.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

const HfTensor& hf_tensor(const std::map<std::string, HfTensor>& hf, const std::string& name,
                          const std::string& engine) {
  auto it = hf.find(name);
  MOE_CHECK(it != hf.end(), "Hugging Face checkpoint has no tensor '", name, "' (needed for the engine's '", engine,
            "')");
  return it->second;
}

// One engine tensor from its HF tensors (see HfTensorMap).
Tensor assemble(const HfTensorMap& map, const std::map<std::string, HfTensor>& hf, HfDType& dtype) {
  std::vector<float> values;
  int64_t rows = 0, cols = 0;
  for (const auto& slice : map.slices) {
    std::vector<const HfTensor*> parts;
    int64_t slice_cols = 0, slice_rows = -1;
    for (const std::string& name : slice) {
      const HfTensor& t = hf_tensor(hf, name, map.engine);
      dtype = t.dtype;
      MOE_CHECK(t.shape.size() == (map.transpose ? 2u : t.shape.size()) && !t.shape.empty() && t.shape.size() <= 2,
                "Hugging Face tensor '", name, "' has ", t.shape.size(), " dimensions");
      // A vector (norm gain, bias) is one row, so the parts of a GLU bias sit side by side.
      const bool vector = t.shape.size() == 1;
      const int64_t r = map.transpose ? t.shape[1] : (vector ? 1 : t.shape[0]);
      const int64_t c = map.transpose ? t.shape[0] : t.shape.back();
      MOE_CHECK(slice_rows < 0 || r == slice_rows, "Hugging Face tensor '", name, "' has input width ", r,
                " but '", slice.front(), "' has ", slice_rows);
      slice_rows = r;
      slice_cols += c;
      parts.push_back(&t);
    }
    MOE_CHECK(rows == 0 || (rows == slice_rows && cols == slice_cols), "Hugging Face tensors of '", map.engine,
              "' differ in shape between experts ('", slice.front(), "')");
    rows = slice_rows;
    cols = slice_cols;
    const size_t base = values.size();
    values.resize(base + static_cast<size_t>(rows * cols));
    int64_t col0 = 0;
    for (const HfTensor* t : parts) {
      const int64_t c = map.transpose ? t->shape[0] : t->shape.back();
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < c; ++j) {
          const int64_t src = map.transpose ? j * rows + i : i * c + j;
          values[base + static_cast<size_t>(i * cols + col0 + j)] = t->values[static_cast<size_t>(src)];
        }
      }
      col0 += c;
    }
  }
  Shape shape;
  if (map.stacked) shape.push_back(static_cast<int64_t>(map.slices.size()));
  const HfTensor& first = hf.at(map.slices.front().front());
  if (!map.transpose && first.shape.size() == 1) {
    shape.push_back(cols);
  } else {
    shape.push_back(rows);
    shape.push_back(cols);
  }
  return Tensor::from_vector(values, shape, DType::f32);
}

// transformers 5's fused expert layout (save_original_format=False): "<layer>mlp.experts.gate_up_proj"
// [E, 2f, d] (gate rows, then up rows) and "...down_proj" [E, d, f], Mixtral's router under
// "mlp.gate": renamed and cut into the Hub's per-expert tensors, which the name map reads.
void unfuse_experts(std::map<std::string, HfTensor>& hf, HfFamily family) {
  if (!hf_family_is_moe(family)) return;
  const bool mixtral = family == HfFamily::mixtral;
  const std::string block = mixtral ? "block_sparse_moe." : "mlp.";
  std::vector<std::string> fused;
  for (const auto& [name, t] : hf) {
    for (const char* tail : {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}) {
      if (name.ends_with(tail) || name.ends_with(std::string(tail) + ".weight")) fused.push_back(name);
    }
  }
  for (const std::string& name : fused) {
    const HfTensor t = std::move(hf.at(name));
    hf.erase(name);
    MOE_CHECK(t.shape.size() == 3, "Hugging Face tensor '", name, "' has ", t.shape.size(),
              " dimensions (fused experts are [experts, out, in])");
    const bool gate_up = name.find("gate_up_proj") != std::string::npos;
    const std::string prefix = name.substr(0, name.find("mlp.experts.")) + block + "experts.";
    const int64_t num_experts = t.shape[0], rows = t.shape[1], cols = t.shape[2], parts = gate_up ? 2 : 1;
    MOE_CHECK(rows % parts == 0, "Hugging Face tensor '", name, "' has an odd number of gate and up rows");
    const char* mixtral_names[] = {"w1", "w3"};
    const char* qwen_names[] = {"gate_proj", "up_proj"};
    for (int64_t e = 0; e < num_experts; ++e) {
      for (int64_t p = 0; p < parts; ++p) {
        const int64_t part_rows = rows / parts;
        const std::string part = gate_up ? (mixtral ? mixtral_names[p] : qwen_names[p]) : (mixtral ? "w2" : "down_proj");
        HfTensor piece{{part_rows, cols}, t.dtype, {}};
        const auto begin = t.values.begin() + (e * rows + p * part_rows) * cols;
        piece.values.assign(begin, begin + part_rows * cols);
        hf[prefix + std::to_string(e) + "." + part + ".weight"] = std::move(piece);
      }
    }
  }
  if (!mixtral) return;
  std::vector<std::string> routers;
  for (const auto& [name, t] : hf) {
    if (name.ends_with(".mlp.gate.weight")) routers.push_back(name);
  }
  for (const std::string& name : routers) {
    HfTensor t = std::move(hf.at(name));
    hf.erase(name);
    hf[name.substr(0, name.size() - 15) + "block_sparse_moe.gate.weight"] = std::move(t);
  }
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  MOE_CHECK(in.good(), "cannot open ", path.string());
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  MOE_CHECK(!j.is_discarded(), path.string(), " is not valid JSON");
  return j;
}

}  // namespace

HfModel read_hf_model(const std::string& hf_dir, int64_t seq_len, const std::string& run_dir) {
  MOE_CHECK(fs::is_directory(hf_dir), "--from-hf ", hf_dir, " is not a directory");
  const fs::path config_path = fs::path(hf_dir) / "config.json";
  MOE_CHECK(fs::is_regular_file(config_path), "--from-hf ", hf_dir, " has no config.json");
  HfModel out;
  out.hf_config = read_json(config_path);
  out.spec = hf_spec_from_config(out.hf_config, seq_len, run_dir);
  std::map<std::string, HfTensor> hf = read_hf_tensors(hf_dir);
  unfuse_experts(hf, out.spec.family);
  if (out.spec.family == HfFamily::gpt2) gpt2_unfuse_qkv(hf);
  std::set<std::string> used;
  const Config& c = out.spec.config;
  Model model(c.model, c.moe);  // the parameter list and shapes the weights must match
  std::map<std::string, Shape> expected;
  for (const ParamInfo& p : model.params().infos()) expected[p.name] = p.shape;
  for (const HfTensorMap& map : hf_tensor_maps(c, out.spec.family)) {
    Tensor t = assemble(map, hf, out.dtype);
    auto it = expected.find(map.engine);
    MOE_CHECK(it != expected.end(), "internal: the HF map names '", map.engine, "', which the model lacks");
    MOE_CHECK(t.shape() == it->second, "Hugging Face tensors of '", map.engine, "' (", map.slices.front().front(),
              ", ...) make shape ", shape_str(t.shape()), " but config.json implies ", shape_str(it->second));
    for (const auto& slice : map.slices) used.insert(slice.begin(), slice.end());
    out.weights[map.engine] = t;
  }
  for (const auto& [name, shape] : expected) {
    MOE_CHECK(out.weights.count(name) > 0, "internal: no HF map for the engine's '", name, "'");
  }
  // Tied heads: a copy of the embedding under lm_head.weight is accepted, anything else refused.
  const std::string embed = out.spec.family == HfFamily::gpt2 ? "transformer.wte.weight" : "model.embed_tokens.weight";
  if (c.model.tie_embeddings && hf.count("lm_head.weight") > 0) {
    MOE_CHECK(hf.at("lm_head.weight").values == hf.at(embed).values,
              "config.json: 'tie_word_embeddings' is true but lm_head.weight differs from ", embed);
    used.insert("lm_head.weight");
  }
  for (const auto& [name, t] : hf) {
    const bool rotary_buffer = name.size() >= 19 && name.ends_with("rotary_emb.inv_freq");
    MOE_CHECK(used.count(name) > 0 || rotary_buffer, "Hugging Face tensor '", name, "' has no place in the engine's ",
              hf_family_name(out.spec.family), " model (config.json and the weights disagree, or the checkpoint "
              "uses a layout this converter does not read)");
  }
  return out;
}

HfImportResult import_hf(const std::string& hf_dir, const std::string& run_dir, int64_t seq_len,
                         const std::vector<std::string>& overrides) {
  MOE_CHECK(!run_dir.empty(), "convert --out is empty");
  MOE_CHECK(!fs::exists(run_dir) || (fs::is_directory(run_dir) && fs::is_empty(run_dir)), "convert --out ", run_dir,
            " exists and is not empty: refusing to write a run directory over it");
  HfImportResult result;
  result.model = read_hf_model(hf_dir, seq_len, run_dir);
  Config& c = result.model.spec.config;
  if (!overrides.empty()) {
    Config changed = parse_config(to_toml(c), "convert --set", overrides);
    changed.source_path = c.source_path;
    static const std::set<std::string> moe_shape_keys = {"moe.num_experts", "moe.d_expert", "moe.granularity",
        "moe.num_shared_experts", "moe.d_shared", "moe.shared_gate", "moe.every", "moe.first_dense", "moe.router",
        "moe.layer_routers", "moe.expert_bias_rate", "moe.top_k"};
    for (const ConfigChange& change : config_changes(c, changed)) {
      MOE_CHECK(!change.key.starts_with("model.") && moe_shape_keys.count(change.key) == 0, "convert --set ",
                change.key, ": the model comes from ", hf_dir, "/config.json (use --seq-len for model.seq_len)");
    }
    c = changed;
  }
  Model model(c.model, c.moe);
  model.allocate(Device::cpu(), DType::f32);
  ParamStore& store = model.params();
  for (size_t i = 0; i < store.infos().size(); ++i) {
    const auto id = static_cast<ParamId>(i);
    store.load_master_from_host(id, result.model.weights.at(store.info(id).name));
  }
  fs::create_directories(run_dir);
  write_file_atomically(fs::path(run_dir) / "config.toml", to_toml(c));
  write_file_atomically(fs::path(run_dir) / "hf_config.json", result.model.hf_config.dump(2) + "\n");
  result.checkpoint_dir = (fs::path(run_dir) / "checkpoints" / "step_0").string();
  fs::create_directories(fs::path(run_dir) / "checkpoints");
  AdamW fresh(store, c.optim);
  write_checkpoint(result.checkpoint_dir, store, fresh, TrainerState{0, c.train.seed, 1, nullptr}, c);
  return result;
}

UpcycleResult upcycle_from_hf(const std::string& hf_dir, const Config& target, const std::string& out_dir,
                              const UpcycleOptions& options) {
  HfModel dense = read_hf_model(hf_dir, target.model.seq_len, target.train.run_dir);
  MOE_CHECK(!hf_family_is_moe(dense.spec.family), "upcycle --from-hf ", hf_dir, " is a ",
            hf_family_name(dense.spec.family), " model, not a dense one");
  Config imported = target;
  imported.model = dense.spec.config.model;
  imported.model.init_std = target.model.init_std;  // the MoE's fresh parameters follow the target
  for (const ConfigChange& change : config_changes(imported, target)) {
    MOE_FAIL("upcycle --from-hf: ", change.key, " = ", change.after, " in the target config, but ", hf_dir,
             "/config.json gives ", change.before);
  }
  return upcycle_from_weights(dense.weights, dense.spec.config.model.activation, target, out_dir, options, hf_dir);
}

}  // namespace moe
