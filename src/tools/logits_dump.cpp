// The logits of one sequence under a checkpoint: the model built on the CPU from the
// checkpoint's config.toml, its weights loaded, one causal forward.
#include "src/tools/logits_dump.h"

#include <filesystem>

#include "src/train/checkpoint.h"

namespace moe {

namespace fs = std::filesystem;

std::unique_ptr<Model> load_cpu_model(const std::string& ckpt, const Config& c, bool use_f64) {
  auto model = std::make_unique<Model>(c.model, c.moe);
  model->allocate(Device::cpu(), use_f64 ? DType::f64 : DType::f32);
  read_checkpoint(ckpt, model->params(), nullptr);
  return model;
}

nlohmann::json checkpoint_logits(const std::string& from, const std::vector<int32_t>& tokens, bool use_f64) {
  MOE_CHECK(fs::is_directory(from), "logits: ", from, " is not a run or checkpoint directory");
  const std::string ckpt = fs::is_regular_file(fs::path(from) / "model.safetensors") ? from : resolve_checkpoint(from, "latest");
  const Config c = load_config((fs::path(ckpt) / "config.toml").string());
  const auto n = static_cast<int64_t>(tokens.size());
  MOE_CHECK(n >= 1 && n <= c.model.seq_len, "logits: ", n, " tokens, but 1 to model.seq_len = ", c.model.seq_len,
            " fit one sequence");
  for (int32_t t : tokens) {
    MOE_CHECK(t >= 0 && t < c.model.vocab_size, "logits: token ", t, " is outside the vocabulary [0, ",
              c.model.vocab_size, ")");
  }
  const std::unique_ptr<Model> model = load_cpu_model(ckpt, c, use_f64);
  std::vector<int32_t> window(static_cast<size_t>(c.model.seq_len), 0);
  std::copy(tokens.begin(), tokens.end(), window.begin());
  const std::vector<double> all = model->logits(window, 1).to_vector<double>();
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t t = 0; t < n; ++t) {
    rows.push_back(std::vector<double>(all.begin() + t * c.model.vocab_size, all.begin() + (t + 1) * c.model.vocab_size));
  }
  return {{"checkpoint", ckpt}, {"tokens", tokens}, {"vocab_size", c.model.vocab_size}, {"logits", rows}};
}

}  // namespace moe
