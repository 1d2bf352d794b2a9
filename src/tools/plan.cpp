// The plan: parameter counts by module, model state per ZeRO stage (this engine and the paper),
// the busiest pipeline stage, FLOPs per token, and the two reports `moe plan` prints.
#include "src/tools/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "src/config/moe_shape.h"
#include "src/config/router_kinds.h"
#include "src/model/model.h"
#include "src/ops/ops.h"
#include "src/train/metrics.h"

namespace moe {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t up_width(const std::string& activation, int64_t width) {
  return ops::is_gated(ops::activation_from_name(activation)) ? 2 * width : width;
}

bool moe_layer(const ModelConfig& m, const MoeConfig& moe, int64_t i) {
  return moe.num_experts > 0 && i >= moe.first_dense && (i - moe.first_dense + 1) % moe.every == 0;
}

// Model state of one parameter group: n parameters (b of them buffers) on this rank, sharded over
// `ranks` from stage 1 as DistributedOptimizer does (S = ceil(n / ranks) on the fullest rank).
ModelState group_state(int64_t n, int64_t b, int ranks, int stage, int64_t cb, int64_t ab, bool separate_master) {
  const int64_t shard = stage >= 1 ? ceil_div(n, ranks) : n;
  ModelState s;
  s.params = cb * (stage == 3 ? shard : n);
  // Stage 0/1: one full flat buffer; stage 2/3: the reduced shard (the modules' gradients in
  // flight are ModelState::open_grads, set with the peak).
  s.grads = ab * (stage >= 2 ? shard : n);
  s.master = separate_master ? ab * shard : 0;
  // Sharded master weights keep full copies of the buffers (ParamStore::shard).
  if (stage >= 1 && (separate_master || stage == 3)) s.master += ab * b;
  s.moments = 2 * ab * shard;
  return s;
}

std::string gb(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  return buf;
}

std::string millions(int64_t n) {
  char buf[64];
  if (n >= 1000000000) {
    std::snprintf(buf, sizeof buf, "%.2fB", static_cast<double>(n) / 1e9);
  } else {
    std::snprintf(buf, sizeof buf, "%.1fM", static_cast<double>(n) / 1e6);
  }
  return buf;
}

// A value of the ZeRO table: at most two decimals, trailing zeros dropped.
std::string table_value(double gbytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", gbytes);
  std::string s = buf;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// Bytes DistributedOptimizer::all_gather_params stages for a group of n elements over `ranks`:
// N chunks of one bucket round, none when the ranks' ranges are equal and fit one round.
int64_t gather_staging(int64_t n, int ranks, int64_t bucket_bytes, int64_t cb) {
  if (ranks <= 1 || n == 0) return 0;
  const int64_t shard = ceil_div(n, ranks), chunk = std::max<int64_t>(1, bucket_bytes / cb / ranks);
  if (shard * ranks == n && shard <= chunk) return 0;
  return cb * ranks * std::min(chunk, shard);
}

// The parameter modules of the planned rank, in registration order (Model's constructor).
struct RankModules {
  int64_t embed = 0;                   // dense, registered first: the token table (or its pipeline copy), positions
  int64_t tail = 0;                    // dense, registered last: final norm and untied LM head
  std::vector<int64_t> dense, expert;  // per stage layer
  int64_t edge() const { return embed + tail; }
};

// ZeRO-2/3 as the trainer runs them (Trainer::on_param_unit, DistributedOptimizer::
// reduce_unit_grads): the embedding and head modules' gradients are open from the first
// backward to the step's end; a block's from its backward until they are reduced (in place)
// right after it; ZeRO-3 gathers the block in use and
// prefetches the next one of the pass. The peak is the moment with the most bytes besides the
// sharded state: the forward's end, each block's backward and reduction, the head's backward, or
// the reduction of the edge modules at the step's end.
void plan_sharded_peak(Plan& p, const RankModules& r, const Config& config, bool last, int64_t cb, int64_t ab) {
  const ActivationPlan& a = p.activations;
  const Topology& t = p.topology;
  const int64_t edge = ab * r.edge();
  const bool gpipe = config.parallel.pp_schedule == "gpipe" ||
                     (config.moe.balance_scope == "global_batch" && a.moe_ffn > 0);
  const bool forward_after_backward = !gpipe && config.train.grad_accum > t.pp - p.stage;
  const int64_t dx = a.tokens * config.model.d_model * cb;
  for (int z = 2; z <= 3; ++z) {
    int64_t best = -1;
    auto consider = [&](int64_t act, int64_t gathered, int64_t open) {
      if (act + gathered + open <= best) return;
      best = act + gathered + open;
      p.sharded_activations[z] = act;
      p.engine[z].gathered = z == 3 ? gathered : 0;
      p.engine[z].open_grads = open;
    };
    consider(a.forward_peak, 0, forward_after_backward ? edge : 0);
    for (size_t i = 0; i < r.dense.size(); ++i) {
      const int64_t block = r.dense[i] + r.expert[i];
      const int64_t prefetched = i > 0 ? cb * (r.dense[i - 1] + r.expert[i - 1]) : 0;
      consider(a.backward_base + a.layer_working[i], cb * block + prefetched, edge + ab * block);
      consider(a.backward_base + dx, prefetched, edge + ab * block);  // its reduction (in place)
    }
    if (last) consider(a.backward_base + a.logits_grad, cb * p.head_module, edge);
    consider(config.train.grad_accum * a.batch, 0, edge);
  }
}

}  // namespace

ParamCounts count_params(const ModelConfig& m, const MoeConfig& moe) {
  ParamCounts c;
  const int64_t d = m.d_model, head_dim = m.d_model / m.num_heads;
  const int64_t norm = m.norm == "layernorm" ? 2 * d : d;
  c.embedding = m.vocab_size * d;
  c.positions = m.positions == "learned" ? m.seq_len * d : 0;
  c.final_norm = norm;
  c.lm_head = m.tie_embeddings ? 0 : d * m.vocab_size;
  const int64_t attention = 2 * d * m.num_heads * head_dim + 2 * d * m.num_kv_heads * head_dim;
  const std::string expert_act = moe.activation.empty() ? m.activation : moe.activation;
  const MoeShape shape = moe_shape(moe);
  const int64_t experts = shape.num_experts, f = shape.d_expert;
  int64_t moe_index = 0, active_experts = 0;
  for (int64_t i = 0; i < m.num_layers; ++i) {
    LayerParams l;
    l.replicated = 2 * norm;
    l.tp_split = attention;
    if (moe_layer(m, moe, i)) {
      l.moe = true;
      const RouterKind& router = moe_layer_router(moe, moe_index++);
      if (router.learned) l.replicated += d * experts;                          // router weight [d,E]
      if (router.noisy) l.replicated += d * experts;                            // noise weight
      if (router.expert_bias && moe.expert_bias_rate > 0) {
        l.replicated += experts;                                                // expert bias buffer
        l.buffers += experts;
        c.buffers += experts;
      }
      l.expert = experts * (d * up_width(expert_act, f) + f * d);
      if (shape.num_shared > 0) {
        const int64_t width = shape.shared_width();
        l.tp_split += d * up_width(expert_act, width) + width * d;
        if (moe.shared_gate) l.replicated += d;
      }
      // The experts a token really uses (1 for hash, the capacity factor for expert choice),
      // rounded per layer as Model::active_params does.
      const double per_expert = static_cast<double>(l.expert / experts);
      active_experts += std::llround(per_expert * router.experts_per_token(moe, shape));
    } else {
      l.tp_split += d * up_width(m.activation, m.d_ff) + m.d_ff * d;
    }
    c.dense += l.dense();
    c.expert += l.expert;
    c.layers.push_back(l);
  }
  c.dense += c.embedding + c.positions + c.final_norm + c.lm_head;
  c.total = c.dense + c.expert;
  // Matmul parameters: the token table only as the tied LM head; no positions, no buffers.
  const int64_t non_matmul = c.positions + c.buffers + (m.tie_embeddings ? 0 : c.embedding);
  c.active = c.dense - non_matmul + active_experts;
  c.matmul_total = c.total - non_matmul;
  return c;
}

FlopsPerToken flops_per_token(const ModelConfig& m, const ParamCounts& p) {
  return {train_flops_per_token(p.active, m.num_layers, m.d_model, m.seq_len),
          train_flops_per_token(p.matmul_total, m.num_layers, m.d_model, m.seq_len)};
}

double zero_paper_bytes(double psi, int stage, double dp, double k) {
  MOE_CHECK(stage >= 0 && stage <= 3, "ZeRO stage ", stage, " is not 0, 1, 2 or 3");
  MOE_CHECK(dp >= 1, "the data-parallel size ", dp, " must be at least 1");
  switch (stage) {
    case 0: return (4 + k) * psi;
    case 1: return 4 * psi + k * psi / dp;
    case 2: return 2 * psi + (2 + k) * psi / dp;
    default: return (4 + k) * psi / dp;
  }
}

std::string format_zero_table() {
  const double models[] = {7.5e9, 128e9, 1e12};
  const char* names[] = {"7.5B", "128B", "1T"};
  std::ostringstream out;
  out << "Per-device model-state memory in GB (1 GB = 1e9 bytes) of mixed-precision Adam under ZeRO\n"
         "(Rajbhandari et al. 2019): 2 bytes/param parameters + 2 gradients + K = 12 optimizer state.\n"
         "P_os = 4Ψ + KΨ/N_d, P_os+g = 2Ψ + (2+K)Ψ/N_d, P_os+g+p = (4+K)Ψ/N_d.\n\n";
  out << "| DP |";
  for (const char* name : names) out << " " << name << " P_os | P_os+g | P_os+g+p |";
  out << "\n|---|";
  for (int i = 0; i < 9; ++i) out << "---|";
  out << "\n";
  for (int dp : {1, 4, 16, 64, 256, 1024}) {
    out << "| " << dp << " |";
    for (double psi : models) {
      for (int stage = 1; stage <= 3; ++stage) out << " " << table_value(zero_paper_bytes(psi, stage, dp) / 1e9) << " |";
    }
    out << "\n";
  }
  return out.str();
}

int64_t Plan::peak_at(int z) const {
  const ModelState& s = engine[z];
  // Forward/backward: model state, the activations and (ZeRO-2/3) the modules' gradients in
  // flight and (ZeRO-3) the modules gathered in full; the optimizer step: model state and one
  // staged bucket.
  const int64_t compute = s.total() + (z >= 2 ? sharded_activations[z] : activations.peak);
  return std::max(compute, s.total() - s.gathered - s.open_grads + (z == 1 || z == 2 ? reduce_staging : 0));
}

Plan make_plan(const Config& config, int world_size, const std::string& device) {
  MOE_CHECK(world_size >= 1, "--world ", world_size, " must be at least 1");
  const ModelConfig& m = config.model;
  MOE_CHECK(m.encoder_layers == 0, "moe plan models decoder-only and encoder-only models; model.encoder_layers = ",
            m.encoder_layers, " (an encoder-decoder, with cross-attention and a decoder of model.decoder_seq_len) is "
            "not modelled");
  Plan best(Topology::from_config(config, world_size, 0));
  const Topology& t = best.topology;
  MOE_CHECK(m.num_layers >= t.pp, "model.num_layers = ", m.num_layers, " cannot fill parallel.pp = ", t.pp,
            " pipeline stages");
  const std::string dev = device.empty() ? config.train.device : device;
  MOE_CHECK(dev == "auto" || dev == "cuda" || dev == "cpu", "unknown device \"", dev, "\" (expected cpu or cuda)");
  const bool cuda = dev != "cpu";
  DType compute = cuda ? DType::bf16 : DType::f32;
  if (!config.train.dtype.empty()) compute = dtype_from_name(config.train.dtype);
  MOE_CHECK(!cuda || compute == DType::bf16, "train.dtype = \"", config.train.dtype, "\" is not supported on CUDA (use bf16)");
  MOE_CHECK(cuda || compute == DType::f32 || compute == DType::f64, "train.dtype = \"", config.train.dtype,
            "\" is not supported on the CPU (use f32 or f64)");
  const DType accum = ops::accum_dtype(compute);
  const int64_t cb = static_cast<int64_t>(dtype_size(compute)), ab = static_cast<int64_t>(dtype_size(accum));
  const ParamCounts params = count_params(m, config.moe);
  const int tp = t.tp, pp = t.pp;

  best.peak = -1;
  const int virtual_stages = static_cast<int>(config.parallel.pp_virtual);
  for (int stage = 0; stage < pp; ++stage) {
    // The stage's layers: its one run, or with interleaved 1F1B those of its chunks (virtual
    // stages c * pp + stage), as Model builds them.
    std::vector<int64_t> layers_here;
    for (int chunk = 0; chunk < virtual_stages; ++chunk) {
      const auto [from, to] = stage_layer_range(m.num_layers, pp * virtual_stages, chunk * pp + stage,
                                                config.parallel.pp_layers);
      for (int64_t i = from; i < to; ++i) layers_here.push_back(i);
    }
    const bool first = stage == 0, last = stage == pp - 1;
    Plan p(t);
    p.cuda = cuda;
    p.compute = compute;
    p.accum = accum;
    p.params = params;
    p.flops = flops_per_token(m, params);
    p.stage = stage;
    p.zero = static_cast<int>(config.parallel.zero);
    // Parameters of this rank: its stage's layers, its TP slice, its EP share of the experts
    // (whole over TP: each TP rank routes its own tokens through them).
    int64_t largest_unit = 0;
    RankModules modules;
    for (int64_t i : layers_here) {
      const LayerParams& l = params.layers[static_cast<size_t>(i)];
      p.stage_layers.push_back(static_cast<int>(i));
      const int64_t dense = ceil_div(l.tp_split, tp) + l.replicated, expert = ceil_div(l.expert, int64_t{t.ep});
      p.rank_dense += dense;
      p.rank_expert += expert;
      p.rank_buffers += l.buffers;
      p.layer_modules.push_back(dense + expert);
      modules.dense.push_back(dense);
      modules.expert.push_back(expert);
      largest_unit = std::max(largest_unit, dense + expert);
    }
    if (first) {
      p.rank_dense += ceil_div(params.embedding, tp) + params.positions;
      largest_unit = std::max(largest_unit, ceil_div(params.embedding, tp) + params.positions);
      modules.embed = ceil_div(params.embedding, tp) + params.positions;
    }
    if (last) {
      // The LM head: untied, or (tied, several stages) the last stage's copy of the token table.
      const int64_t head = params.lm_head > 0 ? ceil_div(params.lm_head, tp) : pp > 1 ? ceil_div(params.embedding, tp) : 0;
      p.rank_dense += params.final_norm + head;
      p.head_module = params.lm_head > 0 || pp > 1 ? head : ceil_div(params.embedding, tp) + params.positions;
      largest_unit = std::max(largest_unit, head);
      if (params.lm_head > 0) {
        modules.tail = params.final_norm + head;
      } else {
        modules.tail = params.final_norm;
        if (pp > 1) modules.embed = head;  // the tied table's pipeline copy, registered first
      }
    }
    p.largest_module = largest_unit;
    for (int z = 0; z <= 3; ++z) {
      ModelState dense = group_state(p.rank_dense, p.rank_buffers, t.dp, z, cb, ab, compute != accum);
      ModelState expert = group_state(p.rank_expert, 0, t.edp, z, cb, ab, compute != accum);
      ModelState& s = p.engine[z];
      s.params = dense.params + expert.params;
      s.grads = dense.grads + expert.grads;
      s.master = dense.master + expert.master;
      s.moments = dense.moments + expert.moments;
      p.paper[z] = zero_paper_bytes(static_cast<double>(p.rank_dense), z, t.dp) +
                   zero_paper_bytes(static_cast<double>(p.rank_expert), z, t.edp);
    }
    // Stage 1/2 all-gather the compute copy after the step through one staged bucket round.
    const auto bucket = static_cast<int64_t>(config.parallel.bucket_mb * 1024 * 1024);
    p.reduce_staging = std::max(gather_staging(p.rank_dense, t.dp, bucket, cb), gather_staging(p.rank_expert, t.edp, bucket, cb));
    p.activations = plan_activations(config, t, compute, p.stage_layers, first, last, stage);
    plan_sharded_peak(p, modules, config, last, cb, ab);
    p.peak = p.peak_at(p.zero);
    if (p.peak > best.peak) best = p;
  }
  return best;
}

std::string format_plan(const Plan& p, const Config& config) {
  const ModelConfig& m = config.model;
  const Topology& t = p.topology;
  const ActivationPlan& a = p.activations;
  std::ostringstream out;
  char line[512];
  out << "moe plan: " << (config.source_path.empty() ? "(config)" : config.source_path) << " on " << t.world_size
      << (t.world_size == 1 ? " rank" : " ranks") << ", " << (p.cuda ? "cuda" : "cpu") << " " << dtype_name(p.compute)
      << " (accumulation " << dtype_name(p.accum) << ")\n";
  out << t.describe();
  out << "\nparameters: " << p.params.total << " (" << millions(p.params.total) << "): dense " << millions(p.params.dense)
      << ", expert " << millions(p.params.expert) << "; active per token " << p.params.active << " ("
      << millions(p.params.active) << ")\n";
  std::snprintf(line, sizeof line, "FLOPs per token (6N + 12 L d S): active %.4g, total %.4g (all experts)\n",
                p.flops.active, p.flops.total);
  out << line;
  out << "planned rank: pipeline stage " << p.stage << " of " << t.pp << " (layers " << p.stage_layers.front() << ".."
      << p.stage_layers.back() << "), holding " << millions(p.rank_dense) << " dense parameters (over dp " << t.dp
      << ") and " << millions(p.rank_expert) << " expert parameters (over expert-dp " << t.edp << ")\n";

  out << "\nmodel state per rank, by ZeRO stage (this engine: " << dtype_name(p.compute) << " parameters, "
      << dtype_name(p.accum) << " gradients (stage 2/3: the reduced shard)"
      << (p.compute != p.accum ? ", fp32 master" : ", the parameters are the master") << ", fp32 Adam m and v):\n";
  std::snprintf(line, sizeof line, "  %-26s %12s %12s %12s %12s\n", "", "stage 0", "stage 1", "stage 2", "stage 3");
  out << line;
  auto row = [&](const char* name, auto value) {
    std::snprintf(line, sizeof line, "  %-26s", name);
    out << line;
    for (int z = 0; z <= 3; ++z) {
      std::snprintf(line, sizeof line, " %12s", gb(static_cast<double>(value(z))).c_str());
      out << line;
    }
    out << "\n";
  };
  row("parameters", [&](int z) { return p.engine[z].params; });
  row("gathered modules (ZeRO-3)", [&](int z) { return p.engine[z].gathered; });
  row("gradients", [&](int z) { return p.engine[z].grads; });
  row("gradients in flight", [&](int z) { return p.engine[z].open_grads; });
  row("master weights", [&](int z) { return p.engine[z].master; });
  row("optimizer moments", [&](int z) { return p.engine[z].moments; });
  row("total (this engine)", [&](int z) { return p.engine[z].total(); });
  row("paper model (2+2+12)", [&](int z) { return static_cast<int64_t>(p.paper[z]); });
  out << "  (ZeRO-2/3 keep a block's gradients from its backward until they are reduce-scattered, and the\n"
         "   embedding and head modules' through the step; ZeRO-3 gathers the module in use and prefetches\n"
         "   the next block; the largest module holds "
      << millions(p.largest_module) << " parameters here)\n";

  out << "\nactivations per micro-batch (" << config.train.micro_batch_size << " x " << m.seq_len << " = " << a.tokens
      << " tokens, " << dtype_name(p.compute) << "):\n";
  if (config.parallel.sequence_parallel && t.tp > 1) {
    out << "  (sequence parallelism: norms, residual stream and stage input hold " << a.tokens / t.tp
        << " tokens per TP rank)\n";
  }
  auto item = [&](const char* name, int64_t bytes, const char* note) {
    std::snprintf(line, sizeof line, "  %-34s %12s  %s\n", name, gb(static_cast<double>(bytes)).c_str(), note);
    out << line;
  };
  item("attention + residual, per layer", a.attention_layer, "norms, q/k/v/out, residual stream");
  bool dense_here = false;
  for (int i : p.stage_layers) dense_here = dense_here || !p.params.layers[static_cast<size_t>(i)].moe;
  if (dense_here) item("dense FFN, per layer", a.dense_ffn, "FFN input, pre- and post-activation");
  if (a.moe_ffn > 0) item("MoE FFN, per layer", a.moe_ffn, "router, slots, expert rows, shared experts");
  if (a.all_to_all > 0) {
    item("  of which all-to-all buffers", a.all_to_all, "returned expert rows, row maps (ep > 1)");
    out << "  (expert parallelism: the plan assumes balanced routing; a rank whose experts receive more\n"
           "   rows than the average holds more)\n";
  }
  item("stage input (embedding)", a.embedding, "");
  if (a.head_chunked) {
    item("head gradients made in forward", a.logits, "d hidden, d head weight (train.head_chunk_tokens)");
  } else if (a.logits > 0) {
    item("logits and loss buffers", a.logits, "final norm, logits [T,V], log-sum-exp");
  }
  item("kept for backward, this stage", a.kept, "");
  if (a.head_forward > 0) item("chunked head, while it runs", a.head_forward, "hidden, one chunk's logits, lse");
  std::snprintf(line, sizeof line, "  %-34s %12lld  %s\n", "micro-batches kept at once", static_cast<long long>(a.micro_batches),
                "(1F1B in flight, or balance_scope = global_batch)");
  out << line;
  if (a.logits_grad > 0) item("logit and hidden gradients", a.logits_grad, "live through the head's backward");
  item("largest block-backward working set", a.backward_working, "");
  item("token ids of the step", config.train.grad_accum * a.batch, "");
  item("activation peak", a.peak, "");

  out << "\nestimated peak per rank (allocator high-water mark):\n";
  for (int z = 0; z <= 3; ++z) {
    std::snprintf(line, sizeof line, "  ZeRO-%d  %10s  (%lld bytes)%s\n", z, gb(static_cast<double>(p.peak_at(z))).c_str(),
                  static_cast<long long>(p.peak_at(z)), z == p.zero ? "  <- parallel.zero" : "");
    out << line;
  }
  return out.str();
}

}  // namespace moe
