// The key registry behind parsing, overrides, validation and to_toml: every config key with its
// section and typed storage, listed once (config_fields.cpp). Internal to src/config.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "src/config/config.h"
#include "src/config/router_kinds.h"

namespace moe::config_internal {

using FieldTarget = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*, std::vector<int64_t>*,
                                 std::vector<double>*, std::vector<std::string>*, std::vector<DataSource>*>;

struct Field {
  const char* section;  // "model"
  const char* key;      // "d_model"
  FieldTarget target;   // points into the Config the registry was built from
  std::string name() const { return std::string(section) + "." + key; }
};

// Every key of every section in declaration order, pointing into `config`.
std::vector<Field> config_fields(Config& config);
// The section names in order: model, moe, train, optim, schedule, data.
const std::vector<std::string>& config_sections();
bool is_section(std::string_view name);
// The field named section.key, or nullptr.
Field* find_field(std::vector<Field>& fields, std::string_view section, std::string_view key);
// " (did you mean 'model.d_model'?)" for a near miss, else "". section may be "" (top level).
std::string suggest_key(const std::vector<Field>& fields, std::string_view section, std::string_view key);

// Where each key got its value, so that validation errors can name the file line or override.
struct KeyOrigins {
  std::string source;                        // the config file name ("" when built in code)
  std::map<std::string, std::string> where;  // "moe.top_k" -> "config.toml:7" | "--set moe.top_k=9"
  // "<origin>: " of the first of `keys` with a known origin, else "<source>: ", else "".
  std::string prefix(std::initializer_list<std::string_view> keys) const;
};

// validate_config with error messages located through `origins`.
void validate_config_at(const Config& config, const KeyOrigins& origins);
// The encoder-decoder and span corruption (config_encoder_decoder.cpp): model.encoder_layers,
// model.decoder_seq_len, moe.decoder_every, objective.noise_density / mean_span_length, and the
// layouts and options the encoder-decoder refuses.
void validate_encoder_decoder(const Config& config, const KeyOrigins& origins);
// Upper limits on sizes and on their products (config_limits.cpp), before anything multiplies them.
void validate_sizes(const Config& config, const KeyOrigins& origins);
// The rules that depend on what the MoE layers' router kinds can do (`kinds`: those in use,
// router_kinds_in_use), part of validate_config_at for MoE models.
void validate_router_kinds(const std::vector<const RouterKind*>& kinds, const Config& config,
                           const KeyOrigins& origins);

}  // namespace moe::config_internal
