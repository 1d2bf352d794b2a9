// validate_config: every range and cross-key rule of the schema in one place. Messages name the
// keys and their values and, through KeyOrigins, the file line or override that set them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/util/check.h"

namespace moe {
namespace {

using config_internal::KeyOrigins;

std::string choices_text(std::initializer_list<const char*> choices) {
  std::string out;
  for (const char* choice : choices) {
    out += out.empty() ? "" : ", ";
    out += *choice ? choice : "\"\"";
  }
  return out;
}

void check_choice(const KeyOrigins& at, const char* key, const std::string& value,
                  std::initializer_list<const char*> choices) {
  for (const char* choice : choices) {
    if (value == choice) return;
  }
  MOE_FAIL(at.prefix({key}), key, " = '", value, "' is not one of: ", choices_text(choices));
}

void check_positive(const KeyOrigins& at, const char* key, int64_t value) {
  MOE_CHECK(value > 0, at.prefix({key}), key, " = ", value, " must be positive");
}

void check_at_least(const KeyOrigins& at, const char* key, int64_t value, int64_t bound) {
  MOE_CHECK(value >= bound, at.prefix({key}), key, " = ", value, " must be at least ", bound);
}

void check_positive(const KeyOrigins& at, const char* key, double value) {
  MOE_CHECK(value > 0, at.prefix({key}), key, " = ", value, " must be positive");
}

void check_non_negative(const KeyOrigins& at, const char* key, double value) {
  MOE_CHECK(value >= 0, at.prefix({key}), key, " = ", value, " must not be negative");
}

// A half-open or closed unit interval: [0,1) for betas, (0,1] for fractions.
void check_unit(const KeyOrigins& at, const char* key, double value, bool open_low, bool open_high) {
  bool ok = (open_low ? value > 0 : value >= 0) && (open_high ? value < 1 : value <= 1);
  MOE_CHECK(ok, at.prefix({key}), key, " = ", value, " must be in ", open_low ? "(" : "[", "0, 1",
            open_high ? ")" : "]");
}

// NaN and infinity pass every comparison-based range check the wrong way, so reject them first.
void check_finite(Config config, const KeyOrigins& at) {
  for (const auto& field : config_internal::config_fields(config)) {
    std::string name = field.name();
    if (auto* value = std::get_if<double*>(&field.target)) {
      MOE_CHECK(std::isfinite(**value), at.prefix({name}), name, " = ", **value, " must be a finite number");
    } else if (auto* values = std::get_if<std::vector<double>*>(&field.target)) {
      for (double v : **values) {
        MOE_CHECK(std::isfinite(v), at.prefix({name}), name, " contains ", v, ", not a finite number");
      }
    }
  }
}

void validate_model(const ModelConfig& m, const KeyOrigins& at) {
  check_positive(at, "model.vocab_size", m.vocab_size);  // its upper limit is in validate_sizes
  check_positive(at, "model.d_model", m.d_model);
  check_positive(at, "model.num_layers", m.num_layers);
  check_positive(at, "model.num_heads", m.num_heads);
  check_positive(at, "model.num_kv_heads", m.num_kv_heads);
  check_positive(at, "model.seq_len", m.seq_len);
  check_positive(at, "model.d_ff", m.d_ff);
  MOE_CHECK(m.d_model % m.num_heads == 0, at.prefix({"model.num_heads", "model.d_model"}),
            "model.d_model = ", m.d_model, " is not divisible by model.num_heads = ", m.num_heads);
  MOE_CHECK(m.num_heads % m.num_kv_heads == 0, at.prefix({"model.num_kv_heads", "model.num_heads"}),
            "model.num_heads = ", m.num_heads, " is not divisible by model.num_kv_heads = ", m.num_kv_heads);
  check_choice(at, "model.norm", m.norm, {"rmsnorm", "layernorm"});
  check_choice(at, "model.positions", m.positions, {"rope", "learned"});
  check_choice(at, "model.activation", m.activation, {"relu", "gelu", "geglu", "swiglu"});
  check_choice(at, "model.objective", m.objective, {"causal_lm", "masked_lm", "span_corruption"});
  int64_t head_dim = m.d_model / m.num_heads;
  MOE_CHECK(m.positions != "rope" || head_dim % 2 == 0,
            at.prefix({"model.positions", "model.num_heads", "model.d_model"}),
            "model.positions = 'rope' needs an even head dimension, but model.d_model / model.num_heads = ",
            m.d_model, " / ", m.num_heads, " = ", head_dim);
  check_positive(at, "model.norm_eps", m.norm_eps);
  check_positive(at, "model.rope_theta", m.rope_theta);
  check_positive(at, "model.init_std", m.init_std);
  check_choice(at, "model.attention_bias", m.attention_bias, {"none", "qkv", "all"});
  check_choice(at, "model.rope_scaling", m.rope_scaling, {"none", "linear", "llama3"});
  if (m.rope_scaling != "none") {
    MOE_CHECK(m.positions == "rope", at.prefix({"model.rope_scaling", "model.positions"}), "model.rope_scaling = '",
              m.rope_scaling, "' scales rotary positions, but model.positions = '", m.positions, "'");
    check_positive(at, "model.rope_factor", m.rope_factor);
  }
  if (m.rope_scaling == "llama3") {
    check_positive(at, "model.rope_low_freq_factor", m.rope_low_freq_factor);
    check_positive(at, "model.rope_original_max_positions", m.rope_original_max_positions);
    MOE_CHECK(m.rope_high_freq_factor > m.rope_low_freq_factor,
              at.prefix({"model.rope_high_freq_factor", "model.rope_low_freq_factor"}),
              "model.rope_high_freq_factor = ", m.rope_high_freq_factor, " must exceed model.rope_low_freq_factor = ",
              m.rope_low_freq_factor, " (llama3 rope scaling interpolates between them)");
  }
  if (m.reset_positions || m.reset_attention) {
    MOE_CHECK(m.eos_id >= 0 && m.eos_id < m.vocab_size,
              at.prefix({"model.eos_id", "model.reset_positions", "model.reset_attention"}), "model.eos_id = ",
              m.eos_id, " is outside the vocabulary [0, model.vocab_size = ", m.vocab_size,
              "), but documents end with it (model.reset_positions / model.reset_attention)");
  }
}

// [objective] and what the objective needs from the rest of the config (docs/objectives.md).
void validate_objective(const Config& c, const KeyOrigins& at) {
  const ObjectiveConfig& o = c.objective;
  check_unit(at, "objective.mask_rate", o.mask_rate, true, true);
  check_unit(at, "objective.mask_token_rate", o.mask_token_rate, false, false);
  check_unit(at, "objective.random_token_rate", o.random_token_rate, false, false);
  MOE_CHECK(o.mask_token_rate + o.random_token_rate <= 1.0,
            at.prefix({"objective.random_token_rate", "objective.mask_token_rate"}), "objective.mask_token_rate + "
            "objective.random_token_rate = ", o.mask_token_rate + o.random_token_rate, " must be at most 1");
  MOE_CHECK(!o.nsp || c.model.objective == "masked_lm", at.prefix({"objective.nsp", "model.objective"}),
            "objective.nsp = true (next-sentence prediction) needs model.objective = 'masked_lm', not '",
            c.model.objective, "'");
  if (c.model.objective != "masked_lm") return;
  if (o.nsp) {
    MOE_CHECK(c.model.seq_len >= 5, at.prefix({"model.seq_len", "objective.nsp"}), "objective.nsp = true lays out "
              "[CLS] A [SEP] B [SEP]: model.seq_len = ", c.model.seq_len, " must be at least 5");
    MOE_CHECK(c.parallel.tp == 1 && c.parallel.pp == 1, at.prefix({"objective.nsp", "parallel.tp", "parallel.pp"}),
              "objective.nsp = true is not built for tensor or pipeline parallelism (parallel.tp = ", c.parallel.tp,
              ", parallel.pp = ", c.parallel.pp, "): use data, expert and ZeRO parallelism");
  }
  MOE_CHECK(!c.model.reset_attention, at.prefix({"model.reset_attention", "model.objective"}),
            "model.reset_attention keeps attention inside documents of a causal model, but model.objective = "
            "'masked_lm' attends both ways; set model.reset_attention = false");
  MOE_CHECK(!c.data.tokenizer.empty(), at.prefix({"data.tokenizer", "model.objective"}),
            "model.objective = 'masked_lm' finds [MASK] by name in the tokenizer: set data.tokenizer to a "
            "SentencePiece model made by `moe tokenize --special-tokens`");
  MOE_CHECK(c.moe.num_experts == 0 || c.moe.hash_kind != "oracle", at.prefix({"moe.hash_kind", "model.objective"}),
            "moe.hash_kind = \"oracle\" routes on the next token, which model.objective = 'masked_lm' does not "
            "predict");
}

// data.train / data.val entries: shard paths given; training weights positive and finite;
// validation datasets are not blended, so their weight stays 1.
void check_sources(const KeyOrigins& at, const char* key, const std::vector<DataSource>& sources, bool training) {
  for (size_t i = 0; i < sources.size(); ++i) {
    const std::string entry = std::string(key) + "[" + std::to_string(i) + "]";
    const DataSource& source = sources[i];
    MOE_CHECK(!source.paths.empty(), at.prefix({key}), entry,
              ": no shard paths (give path = \"...\" or paths = [...])");
    for (const std::string& path : source.paths) {
      MOE_CHECK(!path.empty(), at.prefix({key}), entry, ": an empty shard path");
    }
    if (training) {
      MOE_CHECK(std::isfinite(source.weight) && source.weight > 0, at.prefix({key}), entry, ".weight = ",
                source.weight, " must be positive: it is the dataset's share of the training samples");
    } else {
      MOE_CHECK(source.weight == 1.0, at.prefix({key}), entry, ".weight = ", source.weight,
                ": validation datasets are not blended (every window of every shard is evaluated); remove it");
    }
  }
}

void validate_data(const DataConfig& d, const KeyOrigins& at) {
  check_choice(at, "data.sampling", d.sampling, {"epochs", "random_windows"});
  check_at_least(at, "data.skip_batches", d.skip_batches, 0);
  MOE_CHECK(d.train_path.empty() || d.train.empty(), at.prefix({"data.train", "data.train_path"}),
            "data.train_path and data.train are both set: give the training data once (data.train_path = \"x\" is "
            "data.train = [{ path = \"x\" }])");
  MOE_CHECK(d.val_path.empty() || d.val.empty(), at.prefix({"data.val", "data.val_path"}),
            "data.val_path and data.val are both set: give the validation data once");
  check_sources(at, "data.train", d.train, true);
  check_sources(at, "data.val", d.val, false);
  size_t paths = 0;
  for (const DataSource& source : d.train) paths += source.paths.size();
  const bool one_shard = d.train.empty() || (d.train.size() == 1 && paths == 1);
  MOE_CHECK(d.sampling != "random_windows" || one_shard, at.prefix({"data.sampling", "data.train"}),
            "data.sampling = 'random_windows' draws from one shard, but data.train lists ", d.train.size(),
            " datasets with ", paths, " shard paths: use data.sampling = 'epochs' to blend datasets and read "
            "several shards");
}

void check_router_name(const KeyOrigins& at, const char* key, const std::string& value) {
  MOE_CHECK(find_router_kind(value) != nullptr, at.prefix({key}), key, " = '", value, "' is not one of: ",
            router_kind_names());
}

void validate_routing(const MoeConfig& e, const ModelConfig& m, const KeyOrigins& at) {
  check_router_name(at, "moe.router", e.router);
  for (const std::string& r : e.layer_routers) check_router_name(at, "moe.layer_routers", r);
  if (!e.layer_routers.empty()) {
    int64_t moe_layers = 0;
    for (int64_t i = e.first_dense; i < m.num_layers; ++i) moe_layers += (i - e.first_dense + 1) % e.every == 0;
    MOE_CHECK(static_cast<int64_t>(e.layer_routers.size()) == moe_layers || e.num_experts == 0,
              at.prefix({"moe.layer_routers"}), "moe.layer_routers has ", e.layer_routers.size(),
              " entries but the model has ", moe_layers, " MoE layers");
  }
  check_choice(at, "moe.drop_order", e.drop_order, {"probability", "position"});
  check_choice(at, "moe.balance_scope", e.balance_scope, {"micro_batch", "global_batch"});
  check_choice(at, "moe.aux_count", e.aux_count, {"routed", "kept"});
  check_choice(at, "moe.hash_kind", e.hash_kind,
               {"random", "balanced", "clustering", "dispersed", "position", "bigram", "previous_token", "oracle"});
  check_at_least(at, "moe.granularity", e.granularity, 1);
  check_at_least(at, "moe.num_groups", e.num_groups, 0);
  check_at_least(at, "moe.top_groups", e.top_groups, 0);
  check_at_least(at, "moe.num_shared_experts", e.num_shared_experts, 0);
  check_at_least(at, "moe.d_shared", e.d_shared, 0);
  check_at_least(at, "moe.device_groups", e.device_groups, 0);
  check_at_least(at, "moe.hash_count", e.hash_count, 1);
  for (auto [key, value] : {std::pair{"moe.capacity_factor", e.capacity_factor},
                            {"moe.expert_bias_rate", e.expert_bias_rate},
                            {"moe.importance_loss_coef", e.importance_loss_coef},
                            {"moe.load_loss_coef", e.load_loss_coef}, {"moe.z_loss_coef", e.z_loss_coef},
                            {"moe.seq_aux_loss_coef", e.seq_aux_loss_coef},
                            {"moe.device_loss_coef", e.device_loss_coef}}) {
    check_non_negative(at, key, value);
  }
  if (e.num_experts == 0) return;
  MOE_CHECK(e.d_expert % e.granularity == 0, at.prefix({"moe.granularity", "moe.d_expert"}), "moe.d_expert = ",
            e.d_expert, " is not divisible by moe.granularity = ", e.granularity);
  const MoeShape shape = moe_shape(e);
  const int64_t experts = shape.num_experts, k = shape.top_k;
  MOE_CHECK(e.num_groups == 0 || (experts % e.num_groups == 0 && e.top_groups >= 1 && e.top_groups <= e.num_groups),
            at.prefix({"moe.num_groups", "moe.top_groups"}), "group-limited routing needs moe.num_groups dividing the ",
            experts, " experts and 1 <= moe.top_groups <= moe.num_groups (got ", e.num_groups, " and ", e.top_groups,
            ")");
  MOE_CHECK(e.num_groups == 0 || k <= experts / e.num_groups * e.top_groups, at.prefix({"moe.top_k", "moe.top_groups"}),
            "moe.top_k = ", k, " is more than the ", experts / e.num_groups * e.top_groups,
            " experts of moe.top_groups groups");
  MOE_CHECK(e.device_loss_coef == 0 || (e.device_groups > 0 && experts % e.device_groups == 0),
            at.prefix({"moe.device_groups", "moe.device_loss_coef"}), "moe.device_loss_coef needs moe.device_groups "
            "dividing the ", experts, " experts");
}

void validate_moe(const MoeConfig& e, const ModelConfig& m, const KeyOrigins& at) {
  check_at_least(at, "moe.num_experts", e.num_experts, 0);
  if (e.num_experts > 0) {
    check_at_least(at, "moe.top_k", e.top_k, 1);
    MOE_CHECK(e.top_k <= e.num_experts, at.prefix({"moe.top_k", "moe.num_experts"}), "moe.top_k = ", e.top_k,
              " is larger than moe.num_experts = ", e.num_experts);
  }
  check_positive(at, "moe.d_expert", e.d_expert);
  check_choice(at, "moe.activation", e.activation, {"", "relu", "gelu", "geglu", "swiglu"});
  check_at_least(at, "moe.every", e.every, 1);
  MOE_CHECK(e.first_dense >= 0 && e.first_dense <= m.num_layers, at.prefix({"moe.first_dense", "model.num_layers"}),
            "moe.first_dense = ", e.first_dense, " is outside [0, model.num_layers = ", m.num_layers, "]");
  check_non_negative(at, "moe.aux_loss_coef", e.aux_loss_coef);
  MOE_CHECK(!m.ffn_bias || e.num_experts == 0, at.prefix({"model.ffn_bias", "moe.num_experts"}),
            "model.ffn_bias = true needs a dense model (moe.num_experts = 0): the MoE experts have no biases");
  validate_routing(e, m, at);
}

// Interleaved 1F1B (parallel.pp_virtual): Megatron's schedule needs pipeline stages, 1F1B, whole
// groups of pp micro-batches and a layer per virtual stage.
void validate_virtual_stages(const Config& c, const KeyOrigins& at) {
  const ParallelConfig& p = c.parallel;
  check_at_least(at, "parallel.pp_virtual", p.pp_virtual, 1);
  if (p.pp_virtual == 1) return;
  MOE_CHECK(p.pp > 1, at.prefix({"parallel.pp_virtual", "parallel.pp"}), "parallel.pp_virtual = ", p.pp_virtual,
            " needs parallel.pp > 1 (virtual stages interleave the chunks of several pipeline stages)");
  MOE_CHECK(p.pp_schedule == "1f1b", at.prefix({"parallel.pp_virtual", "parallel.pp_schedule"}),
            "parallel.pp_virtual = ", p.pp_virtual, " (interleaved 1F1B) needs parallel.pp_schedule = \"1f1b\", not \"",
            p.pp_schedule, "\"");
  MOE_CHECK(c.train.grad_accum % p.pp == 0, at.prefix({"parallel.pp_virtual", "train.grad_accum", "parallel.pp"}),
            "parallel.pp_virtual = ", p.pp_virtual, " needs train.grad_accum (", c.train.grad_accum,
            ") to be a multiple of parallel.pp (", p.pp, ")");
  MOE_CHECK(p.pp * p.pp_virtual <= c.model.num_layers,
            at.prefix({"parallel.pp_virtual", "parallel.pp", "model.num_layers"}), "parallel.pp = ", p.pp,
            " x parallel.pp_virtual = ", p.pp_virtual, " virtual stages is more than model.num_layers = ",
            c.model.num_layers, " (every virtual stage needs at least one layer)");
}

// Stage layout and schedule. Each (virtual) stage holds a contiguous run of at least one layer.
void validate_pipeline(const Config& c, const KeyOrigins& at) {
  const ParallelConfig& p = c.parallel;
  const int64_t layers = c.model.num_layers;
  MOE_CHECK(p.pp <= layers, at.prefix({"parallel.pp", "model.num_layers"}), "parallel.pp = ", p.pp,
            " is more than model.num_layers = ", layers, " (every pipeline stage needs at least one layer)");
  validate_virtual_stages(c, at);
  const int64_t stages = p.pp * p.pp_virtual;  // virtual stages
  const char* key = "parallel.pp_layers";
  if (!p.pp_layers.empty()) {
    MOE_CHECK(static_cast<int64_t>(p.pp_layers.size()) == stages,
              at.prefix({key, "parallel.pp", "parallel.pp_virtual"}),
              key, " has ", p.pp_layers.size(), " entries but parallel.pp = ", p.pp,
              p.pp_virtual > 1 ? " x parallel.pp_virtual = " + std::to_string(p.pp_virtual) : std::string(),
              " (one layer count per ", p.pp_virtual > 1 ? "virtual " : "", "pipeline stage)");
    int64_t total = 0;  // saturating, so absurd entries cannot overflow
    for (size_t i = 0; i < p.pp_layers.size(); ++i) {
      const int64_t n = p.pp_layers[i];
      MOE_CHECK(n >= 1, at.prefix({key}), key, "[", i, "] = ", n, " must be at least 1 (every pipeline stage needs "
                "a layer)");
      total = n > std::numeric_limits<int64_t>::max() - total ? std::numeric_limits<int64_t>::max() : total + n;
    }
    MOE_CHECK(total == layers, at.prefix({key, "model.num_layers"}), key, " sums to ", total,
              " layers but model.num_layers = ", layers);
  }
  check_choice(at, "parallel.pp_schedule", p.pp_schedule, {"1f1b", "gpipe"});
  // 1F1B starts backwards before the step's last forwards, so the global-batch counts would be incomplete.
  MOE_CHECK(p.pp == 1 || c.moe.num_experts == 0 || c.moe.balance_scope != "global_batch" || p.pp_schedule == "gpipe",
            at.prefix({"parallel.pp", "moe.balance_scope", "parallel.pp_schedule"}), "parallel.pp = ", p.pp,
            " with moe.balance_scope = \"global_batch\" needs parallel.pp_schedule = \"gpipe\" (1F1B runs backwards "
            "before the last forwards, but the global-batch statistics need every forward of the step first)");
}

void check_tp_divides(const KeyOrigins& at, const char* key, int64_t value, int64_t tp, const char* why) {
  MOE_CHECK(value % tp == 0, at.prefix({key, "parallel.tp"}), key, " = ", value, " is not divisible by parallel.tp = ",
            tp, " (", why, ")");
}

// What tensor parallelism splits must split evenly: heads, hidden widths, the vocabulary and, in
// MoE layers, the micro-batch's tokens (each TP rank routes a slice of them).
void validate_tensor_parallel(const Config& c, const KeyOrigins& at) {
  const int64_t tp = c.parallel.tp;
  const ModelConfig& m = c.model;
  MOE_CHECK(!c.parallel.sequence_parallel || tp > 1, at.prefix({"parallel.sequence_parallel", "parallel.tp"}),
            "parallel.sequence_parallel = true needs parallel.tp > 1 (it shards the tensor-parallel group's "
            "replicated activations along the sequence), but parallel.tp = ", tp);
  if (tp == 1) return;
  const int64_t rows = c.train.micro_batch_size * m.seq_len;
  MOE_CHECK(!c.parallel.sequence_parallel || rows % tp == 0,
            at.prefix({"parallel.sequence_parallel", "train.micro_batch_size", "model.seq_len", "parallel.tp"}),
            "parallel.sequence_parallel = true needs train.micro_batch_size * model.seq_len = ",
            c.train.micro_batch_size, " * ", m.seq_len, " = ", rows, " tokens divisible by parallel.tp = ", tp,
            " (each tensor-parallel rank holds an equal share of the micro-batch's tokens)");
  const MoeConfig& e = c.moe;
  check_tp_divides(at, "model.vocab_size", m.vocab_size, tp, "the embedding and the LM head are split by vocabulary");
  MOE_CHECK(!m.qk_norm, at.prefix({"model.qk_norm", "parallel.tp"}), "model.qk_norm = true needs parallel.tp = 1 "
            "(it normalises the whole q and k projections, which tensor parallelism splits over ranks)");
  check_tp_divides(at, "model.num_heads", m.num_heads, tp, "attention heads are split over the tensor-parallel ranks");
  check_tp_divides(at, "model.num_kv_heads", m.num_kv_heads, tp,
                   "attention heads are split over the tensor-parallel ranks");
  check_tp_divides(at, "model.d_ff", m.d_ff, tp, "the dense FFN hidden width is split over the tensor-parallel ranks");
  if (e.num_experts == 0) return;
  if (e.num_shared_experts > 0) {
    const MoeShape shape = moe_shape(e);
    const int64_t each = shape.d_shared, width = shape.shared_width();
    MOE_CHECK(width % tp == 0, at.prefix({"moe.num_shared_experts", "moe.d_shared", "parallel.tp"}),
              "the shared experts' width moe.num_shared_experts * ", e.d_shared > 0 ? "moe.d_shared" :
              "(moe.d_expert / moe.granularity)", " = ", e.num_shared_experts, " * ", each, " = ", width,
              " is not divisible by parallel.tp = ", tp, " (the shared experts' hidden width is split over the "
              "tensor-parallel ranks)");
  }
  const int64_t tokens = c.train.micro_batch_size * m.seq_len;
  MOE_CHECK(tokens % tp == 0, at.prefix({"train.micro_batch_size", "model.seq_len", "parallel.tp"}),
            "train.micro_batch_size * model.seq_len = ", c.train.micro_batch_size, " * ", m.seq_len, " = ", tokens,
            " tokens is not divisible by parallel.tp = ", tp, " (each tensor-parallel rank routes a slice of the "
            "micro-batch's tokens through the MoE layers)");
  for (auto [key, value] : {std::pair{"moe.importance_loss_coef", e.importance_loss_coef},
                            {"moe.load_loss_coef", e.load_loss_coef}, {"moe.device_loss_coef", e.device_loss_coef}}) {
    MOE_CHECK(value == 0, at.prefix({key, "parallel.tp"}), key, " = ", value, " must be 0 with parallel.tp = ", tp,
              ": each tensor-parallel rank routes a slice of the tokens, and this loss is not a sum over tokens "
              "(use moe.aux_loss_coef, moe.z_loss_coef or moe.seq_aux_loss_coef)");
  }
  MOE_CHECK(e.seq_aux_loss_coef == 0 || c.train.micro_batch_size % tp == 0,
            at.prefix({"moe.seq_aux_loss_coef", "train.micro_batch_size", "parallel.tp"}),
            "moe.seq_aux_loss_coef needs train.micro_batch_size = ", c.train.micro_batch_size,
            " divisible by parallel.tp = ", tp, " (each tensor-parallel rank's slice of tokens must be whole sequences)");
}

// parallel.a2a_overlap_microbatches: two micro-batches through one stage together (Model::forward_pair).
void validate_microbatch_pairs(const Config& c, const KeyOrigins& at) {
  const ParallelConfig& p = c.parallel;
  const std::string key = "parallel.a2a_overlap_microbatches = true";
  MOE_CHECK(p.a2a_overlap, at.prefix({"parallel.a2a_overlap_microbatches", "parallel.a2a_overlap"}), key,
            " overlaps the all-to-alls with another micro-batch's attention: it needs parallel.a2a_overlap = true");
  MOE_CHECK(c.train.grad_accum % 2 == 0, at.prefix({"parallel.a2a_overlap_microbatches", "train.grad_accum"}), key,
            " runs the micro-batches in pairs: train.grad_accum = ", c.train.grad_accum, " must be even");
  MOE_CHECK(p.pp == 1 && p.tp == 1, at.prefix({"parallel.a2a_overlap_microbatches", "parallel.pp", "parallel.tp"}), key,
            " runs on one pipeline stage without tensor parallelism (parallel.pp = ", p.pp, ", parallel.tp = ", p.tp, ")");
  MOE_CHECK(!c.train.recompute, at.prefix({"parallel.a2a_overlap_microbatches", "train.recompute"}), key,
            " keeps both micro-batches' activations: train.recompute must be false");
  MOE_CHECK(c.model.encoder_layers == 0, at.prefix({"parallel.a2a_overlap_microbatches", "model.encoder_layers"}), key,
            " is not built for the encoder-decoder (model.encoder_layers = ", c.model.encoder_layers, ")");
  MOE_CHECK(c.moe.balance_scope == "micro_batch", at.prefix({"parallel.a2a_overlap_microbatches", "moe.balance_scope"}),
            key, " needs moe.balance_scope = 'micro_batch' (the global-batch scope runs every forward first)");
}

void validate_parallel(const Config& c, const KeyOrigins& at) {
  const ParallelConfig& p = c.parallel;
  check_at_least(at, "parallel.tp", p.tp, 1);
  check_at_least(at, "parallel.pp", p.pp, 1);
  check_at_least(at, "parallel.ep", p.ep, 1);
  MOE_CHECK(p.zero >= 0 && p.zero <= 3, at.prefix({"parallel.zero"}), "parallel.zero = ", p.zero,
            " is not a ZeRO stage (0, 1, 2 or 3)");
  check_choice(at, "parallel.order", p.order, {"tp-dp-pp", "dp-tp-pp", "tp-pp-dp", "pp-tp-dp", "dp-pp-tp", "pp-dp-tp"});
  check_positive(at, "parallel.bucket_mb", p.bucket_mb);
  MOE_CHECK(!p.a2a_overlap || p.ep > 1, at.prefix({"parallel.a2a_overlap", "parallel.ep"}),
            "parallel.a2a_overlap = true needs parallel.ep > 1, got parallel.ep = ", p.ep,
            " (it overlaps the expert-parallel all-to-alls, which a single EP rank does not run)");
  if (p.a2a_overlap_microbatches) validate_microbatch_pairs(c, at);
  validate_pipeline(c, at);
  validate_tensor_parallel(c, at);
}

void validate_train(const TrainConfig& t, const KeyOrigins& at) {
  check_at_least(at, "train.steps", t.steps, 1);
  // TOML integers are signed 64-bit, so a larger seed could not be written back by to_toml.
  MOE_CHECK(t.seed <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), at.prefix({"train.seed"}),
            "train.seed = ", t.seed, " must be below 2^63");
  check_at_least(at, "train.micro_batch_size", t.micro_batch_size, 1);
  check_at_least(at, "train.grad_accum", t.grad_accum, 1);
  check_at_least(at, "train.log_every", t.log_every, 1);
  check_at_least(at, "train.eval_every", t.eval_every, 0);
  check_at_least(at, "train.eval_batches", t.eval_batches, 1);
  check_at_least(at, "train.save_every", t.save_every, 0);
  check_at_least(at, "train.keep_last", t.keep_last, 0);
  MOE_CHECK(t.peak_tflops >= 0, at.prefix({"train.peak_tflops"}),
            "train.peak_tflops = ", t.peak_tflops, " must be 0 (the datasheet peak of the device) or positive");
  MOE_CHECK(!t.run_dir.empty(), at.prefix({"train.run_dir"}), "train.run_dir must not be empty");
  check_choice(at, "train.device", t.device, {"auto", "cpu", "cuda"});
  check_choice(at, "train.dtype", t.dtype, {"", "f32", "f64", "bf16"});
  check_choice(at, "train.nonfinite", t.nonfinite, {"stop", "skip_step"});
  check_at_least(at, "train.max_skipped_steps", t.max_skipped_steps, 1);
  check_at_least(at, "train.head_chunk_tokens", t.head_chunk_tokens, 0);
  MOE_CHECK(t.loss_spike_factor == 0 || t.loss_spike_factor > 1, at.prefix({"train.loss_spike_factor"}),
            "train.loss_spike_factor = ", t.loss_spike_factor,
            " must be 0 (off) or above 1 (a loss above factor x the recent mean)");
  MOE_CHECK(!(t.dtype == "f64" && t.device == "cuda"), at.prefix({"train.dtype", "train.device"}),
            "train.dtype = 'f64' is CPU only, but train.device = 'cuda'");
}

void validate_optim(const OptimConfig& o, const KeyOrigins& at) {
  check_positive(at, "optim.lr", o.lr);
  check_non_negative(at, "optim.min_lr", o.min_lr);
  MOE_CHECK(o.min_lr <= o.lr, at.prefix({"optim.min_lr", "optim.lr"}), "optim.min_lr = ", o.min_lr,
            " is larger than optim.lr = ", o.lr);
  check_unit(at, "optim.beta1", o.beta1, false, true);
  check_unit(at, "optim.beta2", o.beta2, false, true);
  check_positive(at, "optim.eps", o.eps);
  check_non_negative(at, "optim.weight_decay", o.weight_decay);
  check_non_negative(at, "optim.grad_clip", o.grad_clip);
}

void validate_schedule(const ScheduleConfig& s, const KeyOrigins& at) {
  check_choice(at, "schedule.kind", s.kind, {"cosine", "linear", "constant", "step", "wsd"});
  check_at_least(at, "schedule.warmup_steps", s.warmup_steps, 0);
  const char* key = "schedule.step_fractions";
  MOE_CHECK(s.kind != "step" || !s.step_fractions.empty(), at.prefix({key, "schedule.kind"}),
            "schedule.kind = 'step' needs at least one entry in ", key);
  for (size_t i = 0; i < s.step_fractions.size(); ++i) {
    double f = s.step_fractions[i];
    MOE_CHECK(f > 0 && f < 1, at.prefix({key}), key, "[", i, "] = ", f, " must be in (0, 1)");
    MOE_CHECK(i == 0 || f > s.step_fractions[i - 1], at.prefix({key}), key, "[", i, "] = ", f,
              " must be larger than the one before (", s.step_fractions[i - 1], ")");
  }
  MOE_CHECK(s.step_factor > 0 && s.step_factor <= 1, at.prefix({"schedule.step_factor"}),
            "schedule.step_factor = ", s.step_factor, " must be in (0, 1]");
  check_unit(at, "schedule.decay_fraction", s.decay_fraction, true, false);
}

// `moe.router = "x"` or `moe.layer_routers = ["x", "y"]`: the routers in use, as configured.
std::string routers_text(const MoeConfig& e) {
  if (e.layer_routers.empty()) return "moe.router = \"" + e.router + "\"";
  std::string out = "moe.layer_routers = [";
  for (size_t i = 0; i < e.layer_routers.size(); ++i) out += (i ? ", \"" : "\"") + e.layer_routers[i] + "\"";
  return out + "]";
}

}  // namespace

namespace config_internal {

void validate_router_kinds(const std::vector<const RouterKind*>& kinds, const Config& c, const KeyOrigins& at) {
  const MoeConfig& e = c.moe;
  const MoeShape shape = moe_shape(e);
  const char* key = e.layer_routers.empty() ? "moe.router" : "moe.layer_routers";
  const std::string in_use = routers_text(e);
  auto all = [&kinds](auto has) {
    return std::all_of(kinds.begin(), kinds.end(), [&](const RouterKind* k) { return has(*k); });
  };
  auto any = [&kinds](auto has) {
    return std::any_of(kinds.begin(), kinds.end(), [&](const RouterKind* k) { return has(*k); });
  };
  for (const RouterKind* kind : kinds) {
    const std::string named = std::string("moe.router \"") + kind->name + "\"";
    MOE_CHECK(kind->token_choice || e.capacity_factor > 0, at.prefix({"moe.capacity_factor", key}), named,
              " needs moe.capacity_factor > 0 (each expert takes its c*T/E best tokens)");
    const int64_t slots = routing_slots(*kind, e, shape);
    const std::string k_key = kind->k_key ? kind->k_key : key;
    MOE_CHECK(!kind->token_choice || slots <= shape.num_experts, at.prefix({k_key, key}), named,
              " routes each token to ", slots, " experts (", k_key, ") but an MoE layer has ", shape.num_experts,
              " (moe.num_experts * moe.granularity)");
    MOE_CHECK(kind->valid_under_tp || c.parallel.tp == 1, at.prefix({"parallel.tp", key}), named,
              " cannot run with parallel.tp = ", c.parallel.tp, ": it is not valid on a tensor-parallel rank's slice "
              "of the tokens");
  }
  auto noisy = [](const RouterKind& k) { return k.noisy; };
  MOE_CHECK(e.load_loss_coef == 0 || all(noisy), at.prefix({"moe.load_loss_coef", key}),
            "moe.load_loss_coef needs a router with gating noise (", router_kind_names(noisy), ") in every MoE layer "
            "(the load estimator uses the gating noise), not ", in_use);
  auto token_scores = [](const RouterKind& k) { return k.token_choice && k.learned; };
  MOE_CHECK(e.balance_scope == "micro_batch" || e.aux_loss_coef > 0, at.prefix({"moe.balance_scope"}),
            "moe.balance_scope = \"global_batch\" pools the Switch loss over the global batch, but moe.aux_loss_coef = ",
            e.aux_loss_coef, " turns it off: set it above 0, or use balance_scope = \"micro_batch\"");
  MOE_CHECK(e.balance_scope == "micro_batch" ||
                (e.importance_loss_coef == 0 && e.load_loss_coef == 0 && e.z_loss_coef == 0 &&
                 e.seq_aux_loss_coef == 0 && e.device_loss_coef == 0 && all(token_scores)),
            at.prefix({"moe.balance_scope"}), "moe.balance_scope = \"global_batch\" applies to the Switch loss "
            "(moe.aux_loss_coef) alone: turn the other balancing losses off, and use a token-choice router with "
            "scores (", router_kind_names(token_scores), ")");
  auto bias = [](const RouterKind& k) { return k.expert_bias; };
  const char* verb = e.layer_routers.empty() ? " has" : " have";
  MOE_CHECK(e.expert_bias_rate == 0 || any(bias), at.prefix({"moe.expert_bias_rate", key}), "moe.expert_bias_rate = ",
            e.expert_bias_rate, " has no effect: ", in_use, verb, " no expert bias (the aux-loss-free bias update "
            "needs one of: ", router_kind_names(bias), ")");
  auto always = [](const RouterKind& k) { return k.renormalization == Renormalization::always; };
  auto optional = [](const RouterKind& k) { return k.renormalization == Renormalization::optional; };
  MOE_CHECK(e.renormalize || !all(always), at.prefix({"moe.renormalize", key}), "moe.renormalize = false has no "
            "effect: ", in_use, " always renormalise", e.layer_routers.empty() ? "s" : "", " a token's weights to sum "
            "to 1 (moe.renormalize = false applies to: ", router_kind_names(optional), ")");
  if (!any([](const RouterKind& k) { return k.hashed; })) return;
  MOE_CHECK(e.hash_kind != "oracle" || e.hash_allow_oracle, at.prefix({"moe.hash_kind", "moe.hash_allow_oracle"}),
            "moe.hash_kind = \"oracle\" routes on the target token and leaks the answer: set "
            "moe.hash_allow_oracle = true to run it as an upper-bound probe");
  MOE_CHECK(!(e.hash_kind == "balanced" || e.hash_kind == "clustering" || e.hash_kind == "dispersed") ||
                !e.hash_table.empty(),
            at.prefix({"moe.hash_table", "moe.hash_kind"}), "moe.hash_kind = \"", e.hash_kind,
            "\" needs moe.hash_table (build it with `moe hash-table`)");
}

void validate_config_at(const Config& config, const KeyOrigins& origins) {
  check_finite(config, origins);
  validate_sizes(config, origins);
  validate_model(config.model, origins);
  validate_objective(config, origins);
  validate_encoder_decoder(config, origins);
  validate_moe(config.moe, config.model, origins);
  if (config.moe.num_experts > 0) validate_router_kinds(router_kinds_in_use(config.moe), config, origins);
  validate_train(config.train, origins);
  validate_optim(config.optim, origins);
  validate_schedule(config.schedule, origins);
  validate_parallel(config, origins);
  validate_data(config.data, origins);
}

}  // namespace config_internal

void validate_config(const Config& config) {
  config_internal::validate_config_at(config, {config.source_path, {}});
}

}  // namespace moe
