// The one list of config keys (section, name, storage) and the lookups built on it: finding a
// key, suggesting the intended key for a typo, and locating a key for error messages.
#include "src/config/config_fields.h"

#include <algorithm>

namespace moe::config_internal {
namespace {

void add_model_fields(ModelConfig& m, std::vector<Field>& out) {
  const char* s = "model";
  out.insert(out.end(), {{s, "vocab_size", &m.vocab_size},     {s, "d_model", &m.d_model},
                         {s, "num_layers", &m.num_layers},     {s, "num_heads", &m.num_heads},
                         {s, "num_kv_heads", &m.num_kv_heads}, {s, "seq_len", &m.seq_len},
                         {s, "norm", &m.norm},                 {s, "norm_eps", &m.norm_eps},
                         {s, "positions", &m.positions},       {s, "rope_theta", &m.rope_theta},
                         {s, "activation", &m.activation},     {s, "d_ff", &m.d_ff},
                         {s, "tie_embeddings", &m.tie_embeddings}, {s, "init_std", &m.init_std},
                         {s, "objective", &m.objective},       {s, "reset_positions", &m.reset_positions},
                         {s, "reset_attention", &m.reset_attention}, {s, "eos_id", &m.eos_id},
                         {s, "rope_scaling", &m.rope_scaling}, {s, "rope_factor", &m.rope_factor},
                         {s, "rope_low_freq_factor", &m.rope_low_freq_factor},
                         {s, "rope_high_freq_factor", &m.rope_high_freq_factor},
                         {s, "rope_original_max_positions", &m.rope_original_max_positions},
                         {s, "attention_bias", &m.attention_bias}, {s, "ffn_bias", &m.ffn_bias},
                         {s, "qk_norm", &m.qk_norm},           {s, "encoder_layers", &m.encoder_layers},
                         {s, "decoder_seq_len", &m.decoder_seq_len}});
}

void add_objective_fields(ObjectiveConfig& o, std::vector<Field>& out) {
  const char* s = "objective";
  out.insert(out.end(), {{s, "mask_rate", &o.mask_rate}, {s, "mask_token_rate", &o.mask_token_rate},
                         {s, "random_token_rate", &o.random_token_rate}, {s, "nsp", &o.nsp},
                         {s, "noise_density", &o.noise_density}, {s, "mean_span_length", &o.mean_span_length}});
}

void add_moe_fields(MoeConfig& m, std::vector<Field>& out) {
  const char* s = "moe";
  out.insert(out.end(), {{s, "num_experts", &m.num_experts}, {s, "top_k", &m.top_k},
                         {s, "d_expert", &m.d_expert},       {s, "renormalize", &m.renormalize},
                         {s, "activation", &m.activation},   {s, "every", &m.every},
                         {s, "first_dense", &m.first_dense}, {s, "aux_loss_coef", &m.aux_loss_coef},
                         {s, "decoder_every", &m.decoder_every},
                         {s, "balance_scope", &m.balance_scope}, {s, "aux_count", &m.aux_count},
                         {s, "router", &m.router},           {s, "layer_routers", &m.layer_routers},
                         {s, "num_groups", &m.num_groups},
                         {s, "top_groups", &m.top_groups},   {s, "capacity_factor", &m.capacity_factor},
                         {s, "drop_order", &m.drop_order},   {s, "granularity", &m.granularity},
                         {s, "num_shared_experts", &m.num_shared_experts}, {s, "d_shared", &m.d_shared},
                         {s, "shared_gate", &m.shared_gate}, {s, "expert_bias_rate", &m.expert_bias_rate},
                         {s, "importance_loss_coef", &m.importance_loss_coef},
                         {s, "load_loss_coef", &m.load_loss_coef}, {s, "z_loss_coef", &m.z_loss_coef},
                         {s, "seq_aux_loss_coef", &m.seq_aux_loss_coef},
                         {s, "device_loss_coef", &m.device_loss_coef}, {s, "device_groups", &m.device_groups},
                         {s, "hash_kind", &m.hash_kind},     {s, "hash_table", &m.hash_table},
                         {s, "hash_per_layer", &m.hash_per_layer}, {s, "hash_allow_oracle", &m.hash_allow_oracle},
                         {s, "hash_seed", &m.hash_seed},     {s, "hash_count", &m.hash_count},
                         {s, "experts_impl", &m.experts_impl}});
}

void add_train_fields(TrainConfig& t, std::vector<Field>& out) {
  const char* s = "train";
  out.insert(out.end(), {{s, "steps", &t.steps},           {s, "seed", &t.seed},
                         {s, "micro_batch_size", &t.micro_batch_size},
                         {s, "grad_accum", &t.grad_accum}, {s, "log_every", &t.log_every},
                         {s, "eval_every", &t.eval_every}, {s, "eval_batches", &t.eval_batches},
                         {s, "save_every", &t.save_every}, {s, "run_dir", &t.run_dir},
                         {s, "resume", &t.resume},         {s, "overwrite", &t.overwrite},
                         {s, "keep_last", &t.keep_last},   {s, "device", &t.device},
                         {s, "dtype", &t.dtype},           {s, "recompute", &t.recompute},
                         {s, "nonfinite", &t.nonfinite},   {s, "max_skipped_steps", &t.max_skipped_steps},
                         {s, "loss_spike_factor", &t.loss_spike_factor}});
  out.push_back({s, "verify_checkpoints", &t.verify_checkpoints});
  out.push_back({s, "init_from", &t.init_from});
  out.push_back({s, "peak_tflops", &t.peak_tflops});
  out.push_back({s, "head_chunk_tokens", &t.head_chunk_tokens});
}

void add_optim_fields(OptimConfig& o, std::vector<Field>& out) {
  const char* s = "optim";
  out.insert(out.end(), {{s, "lr", &o.lr},       {s, "min_lr", &o.min_lr},
                         {s, "beta1", &o.beta1}, {s, "beta2", &o.beta2},
                         {s, "eps", &o.eps},     {s, "weight_decay", &o.weight_decay},
                         {s, "decay_norms_and_biases", &o.decay_norms_and_biases},
                         {s, "decay_embeddings", &o.decay_embeddings},
                         {s, "grad_clip", &o.grad_clip}});
}

void add_schedule_fields(ScheduleConfig& c, std::vector<Field>& out) {
  const char* s = "schedule";
  out.insert(out.end(), {{s, "kind", &c.kind},
                         {s, "warmup_steps", &c.warmup_steps},
                         {s, "step_fractions", &c.step_fractions},
                         {s, "step_factor", &c.step_factor},
                         {s, "decay_fraction", &c.decay_fraction}});
}

void add_data_fields(DataConfig& d, std::vector<Field>& out) {
  const char* s = "data";
  out.insert(out.end(), {{s, "train_path", &d.train_path}, {s, "val_path", &d.val_path},
                         {s, "tokenizer", &d.tokenizer},   {s, "train", &d.train},
                         {s, "val", &d.val},               {s, "sampling", &d.sampling},
                         {s, "skip_batches", &d.skip_batches}});
}

void add_parallel_fields(ParallelConfig& p, std::vector<Field>& out) {
  const char* s = "parallel";
  out.insert(out.end(), {{s, "tp", &p.tp}, {s, "sequence_parallel", &p.sequence_parallel}, {s, "pp", &p.pp}, {s, "pp_layers", &p.pp_layers},
                         {s, "pp_schedule", &p.pp_schedule}, {s, "pp_virtual", &p.pp_virtual},
                         {s, "ep", &p.ep}, {s, "zero", &p.zero},
                         {s, "order", &p.order}, {s, "bucket_mb", &p.bucket_mb},
                         {s, "overlap_grad_reduce", &p.overlap_grad_reduce},
                         {s, "a2a_overlap", &p.a2a_overlap},
                         {s, "shared_expert_stream", &p.shared_expert_stream},
                         {s, "overlap_update", &p.overlap_update},
                         {s, "a2a_overlap_microbatches", &p.a2a_overlap_microbatches}});
}

// Levenshtein distance; keys are short, so the quadratic table is fine.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::vector<Field> config_fields(Config& config) {
  std::vector<Field> out;
  add_model_fields(config.model, out);
  add_objective_fields(config.objective, out);
  add_moe_fields(config.moe, out);
  add_train_fields(config.train, out);
  add_optim_fields(config.optim, out);
  add_schedule_fields(config.schedule, out);
  add_data_fields(config.data, out);
  add_parallel_fields(config.parallel, out);
  return out;
}

const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> sections = {"model", "objective", "moe", "train", "optim", "schedule", "data",
                                                        "parallel"};
  return sections;
}

bool is_section(std::string_view name) {
  const auto& sections = config_sections();
  return std::find(sections.begin(), sections.end(), name) != sections.end();
}

Field* find_field(std::vector<Field>& fields, std::string_view section, std::string_view key) {
  for (auto& field : fields) {
    if (section == field.section && key == field.key) return &field;
  }
  return nullptr;
}

std::string suggest_key(const std::vector<Field>& fields, std::string_view section, std::string_view key) {
  // A typo within the section first (distance <= 2, and less than half the key), then the same
  // key placed in the wrong section.
  const Field* best = nullptr;
  size_t best_distance = 3;
  for (const auto& field : fields) {
    if (section != field.section) continue;
    size_t distance = edit_distance(key, field.key);
    if (distance < best_distance && 2 * distance < key.size()) {
      best = &field;
      best_distance = distance;
    }
  }
  if (!best) {
    for (const auto& field : fields) {
      if (key == field.key) {
        best = &field;
        break;
      }
    }
  }
  return best ? " (did you mean '" + best->name() + "'?)" : "";
}

std::string KeyOrigins::prefix(std::initializer_list<std::string_view> keys) const {
  for (auto key : keys) {
    auto it = where.find(std::string(key));
    if (it != where.end()) return it->second + ": ";
  }
  return source.empty() ? "" : source + ": ";
}

}  // namespace moe::config_internal
