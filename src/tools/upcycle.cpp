// Upcycling: copies what the dense checkpoint shares with the MoE model, then builds each MoE
// layer's experts (and shared experts) from that layer's dense FFN "layers.<i>.ffn.*".
#include "src/tools/upcycle.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/ops/ops.h"
#include "src/io/atomic_dir.h"
#include "src/train/checkpoint.h"
#include "src/train/optimizer.h"
#include "src/io/checksum_manifest.h"
#include "src/io/safetensors.h"
#include "src/util/log.h"
#include "src/util/progress.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// One layer's dense FFN on the host: w_up[d, f] or [d, 2f] = [gate | up], w_down[f, d].
struct DenseFfnWeights {
  int64_t d = 0, f = 0;
  bool gated = false;
  std::vector<float> up, down;
  int64_t up_width() const { return gated ? 2 * f : f; }
};

// Where an FFN's hidden units go: unit u's gate (or only) column of w_up at gate_col + u, its
// up column at up_col + u (GLU only), its w_down row at down_row + u; w_up has up_width columns.
struct UnitSlot {
  float* w_up = nullptr;
  int64_t up_width = 0, gate_col = 0, up_col = 0;
  float* w_down = nullptr;
  int64_t down_row = 0;
};

float scaled_value(float v, double factor) {
  return factor == 1.0 ? v : static_cast<float>(static_cast<double>(v) * factor);
}

// Writes the dense hidden units `units` (in order) into dst, w_up entries times up_factor and
// w_down entries times down_factor (rounded once from the f64 product).
void place_units(const DenseFfnWeights& src, const std::vector<int64_t>& units, double up_factor,
                 double down_factor, const UnitSlot& dst) {
  const int64_t d = src.d, width = src.up_width();
  for (size_t i = 0; i < units.size(); ++i) {
    const int64_t j = units[i], u = static_cast<int64_t>(i);
    for (int64_t r = 0; r < d; ++r) {
      dst.w_up[r * dst.up_width + dst.gate_col + u] = scaled_value(src.up[r * width + j], up_factor);
      if (src.gated) {
        dst.w_up[r * dst.up_width + dst.up_col + u] = scaled_value(src.up[r * width + src.f + j], up_factor);
      }
    }
    for (int64_t c = 0; c < d; ++c) {
      dst.w_down[(dst.down_row + u) * d + c] = scaled_value(src.down[j * d + c], down_factor);
    }
  }
}

// Expert e of an expert group w_up[E, d, W], w_down[E, f_e, d] as a slot.
UnitSlot expert_slot(std::vector<float>& w_up, std::vector<float>& w_down, int64_t e, int64_t d, int64_t f_e,
                     bool gated) {
  const int64_t width = gated ? 2 * f_e : f_e;
  return {w_up.data() + e * d * width, width, 0, f_e, w_down.data() + e * f_e * d, 0};
}

// Seeded streams: each (seed, tag) gets its own generator, so one expert's draws do not depend
// on how many other experts or layers there are.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::mt19937_64 seeded_stream(uint64_t seed, const std::string& tag) {
  return std::mt19937_64(splitmix64(seed ^ fnv1a(tag)));
}

// Uniform in [0, n) without modulo bias (a portable Fisher-Yates, unlike std::shuffle).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t x = rng();
  while (x >= limit) x = rng();
  return x % n;
}

// The first `take` entries of a uniformly random permutation of 0..n-1 (partial Fisher-Yates).
std::vector<int64_t> random_prefix(std::mt19937_64& rng, int64_t n, int64_t take) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < take; ++i) {
    auto j = static_cast<int64_t>(i + uniform_below(rng, static_cast<uint64_t>(n - i)));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  p.resize(static_cast<size_t>(take));
  return p;
}

// Re-draws round(fraction * n) distinct entries of values[0, n) from normal(0, std).
int64_t reinit_entries(float* values, int64_t n, double fraction, double std, std::mt19937_64& rng) {
  const auto count = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  std::normal_distribution<double> normal(0.0, std);
  for (int64_t i : random_prefix(rng, n, count)) values[i] = static_cast<float>(normal(rng));
  return count;
}

std::vector<float> host_values(const ParamStore& store, ParamId id) { return store.master(id).to_vector<float>(); }

void store_values(ParamStore& store, ParamId id, const std::vector<float>& values) {
  store.load_master_from_host(id, Tensor::from_vector(values, store.info(id).shape, DType::f32));
}

bool is_moe_param(const std::string& name) { return name.find(".moe.") != std::string::npos; }

void check_dense_names(const std::vector<std::string>& names, const std::string& source) {
  std::vector<std::string> moe_names;
  for (const auto& n : names) {
    if (is_moe_param(n)) moe_names.push_back(n);
  }
  std::sort(moe_names.begin(), moe_names.end());
  MOE_CHECK(moe_names.empty(), "upcycle source ", source, " is not a dense checkpoint: it has MoE parameters (",
            moe_names.empty() ? "" : moe_names.front(),
            moe_names.size() > 1 ? ", and " + std::to_string(moe_names.size() - 1) + " more" : "", ")");
}

std::string layer_prefix(int64_t layer) { return "layers." + std::to_string(layer); }

DenseFfnWeights load_dense_ffn(const std::map<std::string, Tensor>& dense, int64_t layer, ops::Activation act,
                               int64_t d_model, const std::string& source) {
  const std::string up_name = layer_prefix(layer) + ".ffn.w_up", down_name = layer_prefix(layer) + ".ffn.w_down";
  auto up = dense.find(up_name), down = dense.find(down_name);
  MOE_CHECK(up != dense.end() && down != dense.end(), "upcycle: the dense checkpoint ", source, " has no '",
            up == dense.end() ? up_name : down_name, "' to build the experts of MoE layer ", layer, " from");
  MOE_CHECK(down->second.ndim() == 2 && down->second.size(1) == d_model, "upcycle: '", down_name, "' has shape ",
            shape_str(down->second.shape()), " in ", source, " but the target's d_model is ", d_model);
  DenseFfnWeights w;
  w.d = d_model;
  w.f = down->second.size(0);
  w.gated = ops::is_gated(act);
  MOE_CHECK(up->second.shape() == Shape({w.d, w.up_width()}), "upcycle: '", up_name, "' has shape ",
            shape_str(up->second.shape()), " in ", source, " but a ", ops::activation_name(act),
            " FFN with w_down ", shape_str(down->second.shape()), " needs ", shape_str({w.d, w.up_width()}));
  w.up = up->second.to_vector<float>();
  w.down = down->second.to_vector<float>();
  return w;
}

bool learned_token_choice(const RouterKind& kind) { return kind.learned && kind.token_choice; }

// Everything one MoE layer needs to know while its experts are built.
struct LayerJob {
  const DenseFfnWeights* ffn = nullptr;
  std::string prefix;  // "layers.<i>.moe"
  int64_t layer = 0, num_shared = 0;
  const UpcycleOptions* options = nullptr;
  std::string source;
};

void check_no_shared(const LayerJob& job) {
  MOE_CHECK(job.num_shared == 0, "upcycle --mode ", upcycle_mode_name(job.options->mode),
            " builds no shared experts (moe.num_shared_experts = ", job.num_shared,
            "): they would change the dense function; use --mode partial_reinit");
}

// copy: every expert = the dense FFN.
void build_copy(const LayerJob& job, const MoeConfig& moe, UpcycledLayer& out, std::vector<float>& w_up,
                std::vector<float>& w_down) {
  const DenseFfnWeights& ffn = *job.ffn;
  check_no_shared(job);
  MOE_CHECK(moe.granularity == 1, "upcycle --mode copy needs moe.granularity = 1 (it is ", moe.granularity,
            "): use --mode fine_grained to split the dense FFN");
  MOE_CHECK(out.d_expert == ffn.f, "upcycle --mode copy needs the expert width (moe.d_expert = ", out.d_expert,
            ") to equal the dense d_ff = ", ffn.f, " of layer ", job.layer, " in ", job.source);
  std::vector<int64_t> units(static_cast<size_t>(ffn.f));
  for (int64_t j = 0; j < ffn.f; ++j) units[static_cast<size_t>(j)] = j;
  for (int64_t e = 0; e < out.num_experts; ++e) {
    place_units(ffn, units, 1.0, 1.0, expert_slot(w_up, w_down, e, ffn.d, out.d_expert, ffn.gated));
  }
}

// fine_grained: expert e = segment e % G, scaled by s^(1/2) (s^(1/3) for GLU) per matrix;
// router column of expert e = fresh column e / G.
void build_fine_grained(const LayerJob& job, const MoeConfig& moe, ParamStore& store, UpcycledLayer& out,
                        std::vector<float>& w_up, std::vector<float>& w_down, std::vector<std::string>& warnings) {
  const DenseFfnWeights& ffn = *job.ffn;
  check_no_shared(job);
  MOE_CHECK(learned_token_choice(router_kind(moe.router)), "upcycle --mode fine_grained needs a token-choice router "
            "with learned weights (moe.router = ", router_kind_names(learned_token_choice), "), not '", moe.router, "'");
  MOE_CHECK(ffn.f % out.d_expert == 0, "upcycle --mode fine_grained: the dense d_ff = ", ffn.f, " of layer ",
            job.layer, " in ", job.source, " is not a multiple of the expert width ", out.d_expert,
            " (moe.d_expert / moe.granularity)");
  const int64_t groups = ffn.f / out.d_expert;
  MOE_CHECK(out.num_experts % groups == 0, "upcycle --mode fine_grained: ", out.num_experts,
            " experts (moe.num_experts * moe.granularity) are not a multiple of G = d_ff / expert width = ", groups);
  if (moe.num_groups > 0) {
    MOE_CHECK((out.num_experts / moe.num_groups) % groups == 0, "upcycle --mode fine_grained: moe.num_groups = ",
              moe.num_groups, " makes routing groups of ", out.num_experts / moe.num_groups,
              " experts, which split the virtual groups of G = ", groups);
  }
  if (out.top_k % groups != 0) {
    warnings.push_back("layer " + std::to_string(job.layer) + ": " + std::to_string(out.top_k) +
                       " routed experts per token is not a multiple of G = " + std::to_string(groups) +
                       ": the selection splits virtual groups, so the layer does not reproduce the dense FFN");
  }
  out.groups = groups;
  out.replicas = out.num_experts / groups;
  out.scale = fine_grained_scale(moe, out.num_experts, groups, out.top_k);
  // Per matrix: relu is positively homogeneous, so relu(a x) = a relu(x) and scaling w_up and
  // w_down by sqrt(s) scales the expert by s; GLU experts have three factors (gate, up, down).
  const double factor = ffn.gated ? std::cbrt(out.scale) : std::sqrt(out.scale);
  for (int64_t e = 0; e < out.num_experts; ++e) {
    const int64_t g = e % groups;
    std::vector<int64_t> units(static_cast<size_t>(out.d_expert));
    for (int64_t u = 0; u < out.d_expert; ++u) units[static_cast<size_t>(u)] = g * out.d_expert + u;
    place_units(ffn, units, factor, factor, expert_slot(w_up, w_down, e, ffn.d, out.d_expert, ffn.gated));
  }
  // Virtual groups: experts rG..rG+G-1 share router column r, so they tie on every token and
  // a top-k with k a multiple of G takes whole groups (every segment, i.e. the whole FFN).
  for (const char* name : {".router.weight", ".router.noise_weight"}) {
    const std::string full = job.prefix + name;
    bool present = false;
    for (const ParamInfo& p : store.infos()) present = present || p.name == full;
    if (!present) continue;
    const ParamId id = store.find(full);
    std::vector<float> fresh = host_values(store, id), dup(fresh.size());
    const int64_t d = store.info(id).shape[0], num_experts = store.info(id).shape[1];
    for (int64_t r = 0; r < d; ++r) {
      for (int64_t e = 0; e < num_experts; ++e) dup[r * num_experts + e] = fresh[r * num_experts + e / groups];
    }
    store_values(store, id, dup);
  }
}

// partial_reinit: expert e = the first f_e units of a seeded shuffle of the dense hidden units,
// then round(fraction * entries) entries of each of its two matrices re-drawn.
void build_partial_reinit(const LayerJob& job, ParamStore& store, ParamId up_id, ParamId down_id,
                          UpcycledLayer& out, std::vector<float>& w_up, std::vector<float>& w_down) {
  const DenseFfnWeights& ffn = *job.ffn;
  MOE_CHECK(out.d_expert <= ffn.f, "upcycle --mode partial_reinit: the expert width ", out.d_expert,
            " is larger than the dense d_ff = ", ffn.f, " of layer ", job.layer, " in ", job.source);
  const int64_t width = ffn.gated ? 2 * out.d_expert : out.d_expert;
  const double fraction = job.options->reinit_fraction;
  for (int64_t e = 0; e < out.num_experts; ++e) {
    std::mt19937_64 rng = seeded_stream(job.options->seed, job.prefix + ".experts." + std::to_string(e));
    std::vector<int64_t> units = random_prefix(rng, ffn.f, out.d_expert);
    UnitSlot slot = expert_slot(w_up, w_down, e, ffn.d, out.d_expert, ffn.gated);
    place_units(ffn, units, 1.0, 1.0, slot);
    const double up_std = store.info(up_id).init_std, down_std = store.info(down_id).init_std;
    out.reinit_entries += reinit_entries(slot.w_up, ffn.d * width, fraction, up_std, rng);
    out.reinit_entries += reinit_entries(slot.w_down, out.d_expert * ffn.d, fraction, down_std, rng);
  }
  if (job.num_shared == 0) return;
  // Shared experts: K FFNs of width f_s stored as one of width K*f_s, w_up [gate_1..gate_K |
  // up_1..up_K]; each is a seeded shuffle's first f_s units, not re-initialised.
  const ParamId s_up = store.find(job.prefix + ".shared.w_up"), s_down = store.find(job.prefix + ".shared.w_down");
  const int64_t total = store.info(s_down).shape[0], f_s = total / job.num_shared;
  MOE_CHECK(f_s <= ffn.f, "upcycle --mode partial_reinit: the shared expert width ", f_s,
            " (moe.d_shared) is larger than the dense d_ff = ", ffn.f, " of layer ", job.layer, " in ", job.source);
  std::vector<float> up = host_values(store, s_up), down = host_values(store, s_down);
  for (int64_t j = 0; j < job.num_shared; ++j) {
    std::mt19937_64 rng = seeded_stream(job.options->seed, job.prefix + ".shared." + std::to_string(j));
    UnitSlot slot{up.data(), store.info(s_up).shape[1], j * f_s, total + j * f_s, down.data(), j * f_s};
    place_units(ffn, random_prefix(rng, ffn.f, f_s), 1.0, 1.0, slot);
  }
  store_values(store, s_up, up);
  store_values(store, s_down, down);
}

// moe: the [moe] config with this layer's router (moe.layer_routers applied).
UpcycledLayer upcycle_layer(const DenseFfnWeights& ffn, Model& target, const MoeConfig& moe, int64_t layer,
                            const UpcycleOptions& options, const std::string& source,
                            std::vector<std::string>& warnings) {
  ParamStore& store = target.params();
  LayerJob job{&ffn, layer_prefix(layer) + ".moe", layer, moe.num_shared_experts, &options, source};
  const ParamId up_id = store.find(job.prefix + ".experts.w_up"), down_id = store.find(job.prefix + ".experts.w_down");
  UpcycledLayer out;
  out.layer = layer;
  out.num_experts = store.info(down_id).shape[0];
  out.d_expert = store.info(down_id).shape[1];
  out.d_dense = ffn.f;
  out.top_k = moe_shape(moe).top_k;
  std::vector<float> w_up = host_values(store, up_id), w_down = host_values(store, down_id);
  out.expert_entries = static_cast<int64_t>(w_up.size() + w_down.size());
  switch (options.mode) {
    case UpcycleMode::copy: build_copy(job, moe, out, w_up, w_down); break;
    case UpcycleMode::fine_grained: build_fine_grained(job, moe, store, out, w_up, w_down, warnings); break;
    case UpcycleMode::partial_reinit: build_partial_reinit(job, store, up_id, down_id, out, w_up, w_down); break;
  }
  store_values(store, up_id, w_up);
  store_values(store, down_id, w_down);
  return out;
}

nlohmann::json result_json(const std::string& from_dir, const UpcycleOptions& options, const UpcycleResult& r) {
  nlohmann::json out = {{"source", from_dir}, {"mode", upcycle_mode_name(options.mode)}, {"seed", options.seed}};
  if (options.mode == UpcycleMode::partial_reinit) out["reinit_fraction"] = options.reinit_fraction;
  out["copied"] = r.copied;
  out["layers"] = nlohmann::json::array();
  for (const UpcycledLayer& l : r.layers) {
    out["layers"].push_back({{"layer", l.layer}, {"experts", l.num_experts}, {"d_expert", l.d_expert},
                             {"d_dense", l.d_dense}, {"top_k", l.top_k}, {"groups", l.groups},
                             {"replicas", l.replicas}, {"scale", l.scale}, {"reinit_entries", l.reinit_entries},
                             {"expert_entries", l.expert_entries}});
  }
  out["warnings"] = r.warnings;
  return out;
}

}  // namespace

UpcycleMode upcycle_mode_from_name(const std::string& name) {
  if (name == "copy") return UpcycleMode::copy;
  if (name == "fine_grained") return UpcycleMode::fine_grained;
  if (name == "partial_reinit") return UpcycleMode::partial_reinit;
  MOE_FAIL("unknown upcycle mode '", name, "' (copy | fine_grained | partial_reinit)");
}

const char* upcycle_mode_name(UpcycleMode mode) {
  switch (mode) {
    case UpcycleMode::copy: return "copy";
    case UpcycleMode::fine_grained: return "fine_grained";
    case UpcycleMode::partial_reinit: return "partial_reinit";
  }
  return "?";
}

bool router_renormalizes(const MoeConfig& moe) { return renormalizes(router_kind(moe.router), moe); }

double fine_grained_scale(const MoeConfig& moe, int64_t num_experts, int64_t groups, int64_t top_k) {
  MOE_CHECK(groups > 0 && num_experts % groups == 0 && top_k > 0, "fine_grained_scale: E = ", num_experts,
            ", G = ", groups, ", k = ", top_k);
  // Renormalised: a selected group r holds weight p_r / sum_selected p over its G experts, each
  // expert p_r / (G sum p), so G restores the dense output exactly. Otherwise each of the k
  // selected experts has weight about 1/E at a fresh router: k/G groups times s/E must be one.
  if (router_renormalizes(moe)) return static_cast<double>(groups);
  const double replicas = static_cast<double>(num_experts / groups);
  return replicas * static_cast<double>(groups * groups) / static_cast<double>(top_k);
}

UpcycleResult upcycle_weights(const std::map<std::string, Tensor>& dense, const std::string& source_activation,
                              Model& target, const UpcycleOptions& options, const std::string& source_name) {
  std::vector<std::string> names;
  for (const auto& entry : dense) names.push_back(entry.first);
  check_dense_names(names, source_name);
  MOE_CHECK(options.mode != UpcycleMode::partial_reinit ||
                (options.reinit_fraction >= 0.0 && options.reinit_fraction <= 1.0),
            "upcycle --reinit-fraction ", options.reinit_fraction, " is outside [0, 1]");
  const ModelConfig& mc = target.config();
  const MoeConfig& moe = target.moe_config();
  MOE_CHECK(target.num_moe_layers() > 0, "upcycle: the target config has no MoE layer (moe.num_experts = ",
            moe.num_experts, ")");
  ParamStore& store = target.params();
  UpcycleResult result;
  std::set<std::string> used;
  for (size_t i = 0; i < store.infos().size(); ++i) {
    const auto id = static_cast<ParamId>(i);
    const ParamInfo& p = store.info(id);
    auto it = dense.find(p.name);
    if (it == dense.end()) {
      MOE_CHECK(is_moe_param(p.name), "upcycle: the target model's parameter '", p.name,
                "' is not in the dense checkpoint ", source_name, " (the [model] sections differ)");
      continue;
    }
    MOE_CHECK(it->second.shape() == p.shape, "upcycle: parameter '", p.name, "' has shape ",
              shape_str(it->second.shape()), " in the dense checkpoint ", source_name, " but ", shape_str(p.shape),
              " in the target model");
    store.load_master_from_host(id, it->second);
    used.insert(p.name);
    result.copied.push_back(p.name);
  }
  const std::string expert_activation = moe.activation.empty() ? mc.activation : moe.activation;
  MOE_CHECK(expert_activation == source_activation, "upcycle: the experts' activation '", expert_activation,
            "' differs from the dense FFN's '", source_activation, "' in ", source_name,
            " (set moe.activation = \"", source_activation, "\")");
  const ops::Activation act = ops::activation_from_name(source_activation);
  int64_t moe_index = 0;
  ProgressDisplay progress;
  for (int64_t layer = 0; layer < mc.num_layers; ++layer) {
    if (!is_moe_layer(mc, moe, layer)) continue;
    if (progress.due()) progress.show(fmt::format("upcycle: layer {} of {} ({:.0f} s)", layer, mc.num_layers, progress.seconds()));
    DenseFfnWeights ffn = load_dense_ffn(dense, layer, act, mc.d_model, source_name);
    used.insert(layer_prefix(layer) + ".ffn.w_up");
    used.insert(layer_prefix(layer) + ".ffn.w_down");
    MoeConfig layer_moe = moe;  // as Model does: moe.layer_routers picks this layer's router
    layer_moe.router = moe_layer_router(moe, moe_index++).name;
    result.layers.push_back(upcycle_layer(ffn, target, layer_moe, layer, options, source_name, result.warnings));
  }
  progress.finish(fmt::format("upcycle: {} MoE layers in {:.1f} s", result.layers.size(), progress.seconds()),
                  log::Level::debug);
  for (const auto& name : names) {
    MOE_CHECK(used.count(name) > 0, "upcycle: the dense checkpoint's parameter '", name, "' (", source_name,
              ") has no place in the target model (the [model] sections differ)");
  }
  return result;
}

UpcycleResult upcycle_checkpoint(const std::string& from_dir, const Config& target, const std::string& out_dir,
                                 const UpcycleOptions& options) {
  MOE_CHECK(fs::is_directory(from_dir), "upcycle source ", from_dir,
            " does not exist (expected a checkpoint directory)");
  const fs::path model_path = fs::path(from_dir) / "model.safetensors";
  const fs::path config_path = fs::path(from_dir) / "config.toml";
  MOE_CHECK(fs::is_regular_file(model_path), "upcycle source ", from_dir,
            " has no model.safetensors (not a checkpoint directory)");
  std::vector<std::string> names;
  for (const SafetensorsEntry& e : read_safetensors_header(model_path).entries) names.push_back(e.name);
  check_dense_names(names, from_dir);
  MOE_CHECK(fs::is_regular_file(config_path), "upcycle source ", from_dir,
            " has no config.toml (its dense FFN activation is read from there)");
  const Config source = load_config(config_path.string());
  SafetensorsFile weights =
      read_verified_safetensors(from_dir, "model.safetensors", checkpoint_manifest(from_dir, true), true);
  return upcycle_from_weights(weights.tensors, source.model.activation, target, out_dir, options, from_dir);
}

UpcycleResult upcycle_from_weights(const std::map<std::string, Tensor>& dense, const std::string& source_activation,
                                   const Config& target, const std::string& out_dir, const UpcycleOptions& options,
                                   const std::string& source_name) {
  MOE_CHECK(target.moe.num_experts > 0, "upcycle target config ", target.source_path,
            " has moe.num_experts = 0: there is no MoE layer to build");
  MOE_CHECK(!out_dir.empty(), "upcycle --out is empty");
  std::error_code ec;
  MOE_CHECK(!fs::equivalent(source_name, out_dir, ec), "upcycle --out ", out_dir,
            " is the source checkpoint: write the MoE checkpoint to another directory");
  // write_checkpoint replaces out_dir as a whole: never an unrelated directory.
  MOE_CHECK(!fs::exists(out_dir) || (fs::is_directory(out_dir) && (fs::is_empty(out_dir) ||
                                                                 fs::exists(fs::path(out_dir) / "model.safetensors"))),
            "upcycle --out ", out_dir, " exists and is not a checkpoint directory: refusing to replace it");
  log::Progress timer;
  Model model(target.model, target.moe);
  log::debug("upcycle: initialising the MoE model ({} parameters)", model.total_params());
  model.allocate(Device::cpu(), DType::f32);
  model.initialize(options.seed);
  log::debug("upcycle: model initialised in {:.1f} s", timer.seconds());
  UpcycleResult result = upcycle_weights(dense, source_activation, model, options, source_name);
  // A fresh optimizer: zero AdamW moments, and step 0 so the schedule starts with its warmup.
  AdamW fresh(model.params(), target.optim);
  write_checkpoint(out_dir, model.params(), fresh, TrainerState{0, target.train.seed, 1, nullptr}, target);
  log::debug("upcycle: wrote {} after {:.1f} s", out_dir, timer.seconds());
  write_file_atomically(fs::path(out_dir) / "upcycle.json", result_json(source_name, options, result).dump(2) + "\n");
  return result;
}

}  // namespace moe
