// `moe plan`: the ZeRO paper's table against ../shared/reference.md, parameter counts against the
// model itself, model state and activations of a small config by hand, FLOPs per token as the
// benchmarks reported, the peak estimate against GPU peaks measured on an H200 and against the
// CPU allocator's high-water mark of real training steps, and the messages for bad input.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/model/model.h"
#include "src/tools/plan.h"
#include "src/train/trainer.h"
#include "tests/train/train_test_util.h"

using namespace moe;
using Catch::Matchers::Contains;

namespace {

// The GPT-2-small-shaped benchmark configs of experiments/perf/*.toml.
Config gpt2_small() {
  Config c;
  c.model.vocab_size = 50304;
  c.model.d_model = 768;
  c.model.num_layers = 12;
  c.model.num_heads = 12;
  c.model.num_kv_heads = 12;
  c.model.seq_len = 1024;
  c.model.norm = "layernorm";
  c.model.positions = "learned";
  c.model.activation = "gelu";
  c.model.d_ff = 3072;
  c.model.tie_embeddings = true;
  c.train.micro_batch_size = 16;
  c.train.device = "cuda";
  // The GPU peaks below were recorded while the head kept its logits for backward.
  c.train.head_chunk_tokens = 0;
  return c;
}

Config gpt2_small_moe64() {  // experiments/perf/gpt2_small_moe64.toml
  Config c = gpt2_small();
  // The GPU peaks below were recorded before the grouped experts stopped keeping the post-activation
  // (2026-12-04); the loop keeps it as they did then, so the plan is asked for the loop.
  c.moe.experts_impl = "loop";
  c.moe.num_experts = 64;
  c.moe.top_k = 6;
  c.moe.d_expert = 384;
  c.moe.renormalize = false;
  c.moe.aux_loss_coef = 0.01;
  return c;
}

Config moe_small() {  // experiments/perf/moe_small.toml
  Config c = gpt2_small_moe64();
  c.model.norm = "rmsnorm";
  c.model.positions = "rope";
  c.model.activation = "swiglu";
  c.model.d_ff = 2304;
  c.moe.router = "softmax_topk";
  c.moe.num_shared_experts = 2;
  c.moe.d_shared = 384;
  c.moe.shared_gate = true;
  return c;
}

// A config small enough to count by hand: 2 layers (dense, then MoE), d 8, 2 heads, vocab 16,
// SwiGLU d_ff 8, 4 experts of width 4, top-1, tied embeddings, RMSNorm, rope.
Config hand_config() {
  Config c;
  c.model.vocab_size = 16;
  c.model.d_model = 8;
  c.model.num_layers = 2;
  c.model.num_heads = 2;
  c.model.num_kv_heads = 2;
  c.model.seq_len = 4;
  c.model.activation = "swiglu";
  c.model.d_ff = 8;
  c.moe.num_experts = 4;
  c.moe.top_k = 1;
  c.moe.d_expert = 4;
  c.moe.every = 2;  // layer 1 only
  c.train.micro_batch_size = 2;
  c.train.device = "cuda";
  return c;
}

// What `moe bench train` measures: this rank's allocator high-water mark over timed steps.
int64_t measured_cpu_peak(const Config& config, Communicator& world) {
  Trainer trainer(config, 0, world);
  return trainer.bench(1, 2)["peak_memory_bytes"].get<int64_t>();
}

// The busiest rank's measured peak and the plan's estimate for config on this job's ranks; the
// estimate must land within 2% of the measurement.
struct PeakPair {
  int64_t measured = 0, planned = 0;
};
PeakPair require_planned_peak(const Config& config, Communicator& world, const std::string& what) {
  validate_config(config);
  std::vector<double> busiest{static_cast<double>(measured_cpu_peak(config, world))};
  world.all_reduce_max(busiest);
  const PeakPair p{static_cast<int64_t>(busiest[0]), make_plan(config, world.size()).peak};
  INFO(what << " on " << world.size() << " ranks: estimate " << p.planned << ", measured " << p.measured);
  REQUIRE(std::abs(static_cast<double>(p.planned - p.measured)) <= 0.02 * static_cast<double>(p.measured));
  return p;
}

// What `lean` saves against `full`, measured and planned: both positive, the plan's within 5%.
void require_planned_saving(const PeakPair& full, const PeakPair& lean, const std::string& what) {
  const int64_t saved = full.measured - lean.measured, predicted = full.planned - lean.planned;
  INFO(what << " saves " << saved << " bytes, the plan " << predicted);
  REQUIRE(predicted > 0);
  REQUIRE(saved > 0);
  REQUIRE(std::abs(static_cast<double>(saved - predicted)) <= 0.05 * static_cast<double>(predicted));
}

std::string run_binary(const std::string& args, int& status) {
  const char* binary = std::getenv("MOE_BINARY");
  std::string log = (std::filesystem::temp_directory_path() / ("moe-plan-" + std::to_string(::getpid()) + ".log")).string();
  status = std::system((std::string(binary) + " " + args + " > " + log + " 2>&1").c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::remove(log);
  return text.str();
}

}  // namespace

TEST_CASE("the ZeRO table reproduces reference.md to its printed precision", "[train][plan]") {
  // ../shared/reference.md, "Per-device model-state memory in GB", as printed there: rows DP 1,
  // 4, 16, 64, 256, 1024; columns 7.5B, 128B, 1T x (P_os, P_os+g, P_os+g+p).
  const std::vector<std::vector<std::string>> printed = {
      {"120", "120", "120", "2048", "2048", "2048", "16000", "16000", "16000"},
      {"52.5", "41.3", "30", "896", "704", "512", "7000", "5500", "4000"},
      {"35.6", "21.6", "7.5", "608", "368", "128", "4750", "2875", "1000"},
      {"31.4", "16.6", "1.88", "536", "284", "32", "4187", "2218", "250"},
      {"30.4", "15.4", "0.47", "518", "263", "8", "4046", "2054", "62.5"},
      {"30.1", "15.1", "0.12", "513", "257", "2", "4011", "2013", "15.6"},
  };
  const double dps[] = {1, 4, 16, 64, 256, 1024};
  const double psis[] = {7.5e9, 128e9, 1e12};
  for (size_t row = 0; row < 6; ++row) {
    for (size_t col = 0; col < 9; ++col) {
      const std::string& text = printed[row][col];
      const size_t dot = text.find('.');
      const int decimals = dot == std::string::npos ? 0 : static_cast<int>(text.size() - dot - 1);
      const double computed = zero_paper_bytes(psis[col / 3], static_cast<int>(col % 3) + 1, dps[row]) / 1e9;
      INFO("DP " << dps[row] << ", column " << col << ": printed " << text << ", computed " << computed);
      // Within one unit of the last printed digit: the paper rounds some entries (41.25 -> 41.3)
      // and truncates others (257.75 -> 257, 4187.5 -> 4187).
      REQUIRE(std::abs(computed - std::stod(text)) < std::pow(10.0, -decimals));
    }
  }
  // Stage 0 is the baseline 16 psi; and the table as `moe plan --zero-table` prints it.
  REQUIRE(zero_paper_bytes(7.5e9, 0, 64) == 120e9);
  const std::string table = format_zero_table();
  REQUIRE_THAT(table, Contains("| 4 | 52.5 | 41.25 | 30 | 896 | 704 | 512 | 7000 | 5500 | 4000 |"));
  REQUIRE_THAT(table, Contains("| 1024 | 30.09 | 15.1 | 0.12 | 513.5 | 257.75 | 2 | 4011.72 | 2013.67 | 15.62 |"));
}

TEST_CASE("parameter counts equal the model's own, for dense and MoE variants", "[train][plan]") {
  std::vector<Config> configs = {gpt2_small(), gpt2_small_moe64(), moe_small(), hand_config()};
  Config c = hand_config();
  c.model.tie_embeddings = false;
  c.model.num_kv_heads = 1;
  c.model.norm = "layernorm";
  c.model.positions = "learned";
  c.moe.router = "noisy_topk";
  c.moe.granularity = 2;
  c.moe.top_k = 2;
  c.moe.num_shared_experts = 2;
  c.moe.shared_gate = true;
  c.moe.activation = "gelu";
  configs.push_back(c);
  c.moe.router = "sigmoid";
  c.moe.expert_bias_rate = 1e-3;
  c.moe.every = 1;
  c.moe.first_dense = 1;
  configs.push_back(c);
  c.moe.router = "expert_choice";
  c.moe.capacity_factor = 1.0;
  c.moe.layer_routers = {"hash"};
  configs.push_back(c);
  for (size_t i = 0; i < configs.size(); ++i) {
    INFO("config " << i);
    Model model(configs[i].model, configs[i].moe);
    ParamCounts p = count_params(configs[i].model, configs[i].moe);
    REQUIRE(p.total == model.params().total_numel());
    REQUIRE(p.dense == model.params().group_numel(ParamGroup::dense));
    REQUIRE(p.expert == model.params().group_numel(ParamGroup::expert));
    REQUIRE(p.active == model.active_params());
  }
}

TEST_CASE("FLOPs per token of the benchmark configs", "[train][plan]") {
  // experiments/perf/results/bench_gpt2_small_{dense,moe64}.json (`moe bench train`): params,
  // active_params and flops_per_token as the benchmark reported them.
  ParamCounts dense = count_params(gpt2_small().model, gpt2_small().moe);
  REQUIRE(dense.total == 124392960);
  REQUIRE(dense.active == 123606528);  // the 123.6M active parameters of GPT-2 small
  FlopsPerToken f = flops_per_token(gpt2_small().model, dense);
  REQUIRE(f.active == 854885376.0);   // 6 * 123606528 + 12 * 12 * 768 * 1024
  REQUIRE(f.total == f.active);       // dense: every parameter is active
  ParamCounts moe = count_params(gpt2_small_moe64().model, gpt2_small_moe64().moe);
  REQUIRE(moe.total == 521344512);
  REQUIRE(moe.active == 110040576);
  f = flops_per_token(gpt2_small_moe64().model, moe);
  REQUIRE(f.active == 773489664.0);
  // Total: every expert, no learned-position table: 6 * (521344512 - 1024 * 768) + 12 L d S.
  REQUIRE(f.total == 6.0 * (521344512 - 1024 * 768) + 12.0 * 12 * 768 * 1024);
  // moe_small: 768M total, 152M active, as the Qwen2-MoE "small" anchor (../shared/anchors.md).
  ParamCounts small = count_params(moe_small().model, moe_small().moe);
  REQUIRE(small.total == 768274176);
  REQUIRE(small.active == 152497920);
  REQUIRE(flops_per_token(moe_small().model, small).active == 1028233728.0);
}

TEST_CASE("model state per ZeRO stage of a small config, by hand", "[train][plan]") {
  Config c = hand_config();
  // By hand: embedding 16*8 = 128; layer 0 = norms 2*8 + attention 4*8*8 + SwiGLU 8*16 + 8*8
  // = 464; layer 1 = norms 16 + attention 256 + router 8*4 = 304 dense and experts
  // 4 * (8*8 + 4*8) = 384; final norm 8. Dense 904, expert 384, active 904 + 384/4 = 1000.
  ParamCounts p = count_params(c.model, c.moe);
  REQUIRE(p.dense == 904);
  REQUIRE(p.expert == 384);
  REQUIRE(p.active == 1000);

  // 4 ranks, dp 4, ep 2 (expert-dp 2): each rank holds 904 dense and 384/2 = 192 expert params.
  c.parallel.ep = 2;
  Plan plan = make_plan(c, 4);
  REQUIRE(plan.rank_dense == 904);
  REQUIRE(plan.rank_expert == 192);
  // This engine on the GPU: bf16 params (2), fp32 grads (4; a full buffer at stage 0/1, the
  // shard at 2/3), fp32 master (4), fp32 m and v (8). Shards from stage 1: dense ceil(904/4) =
  // 226, expert 192/2 = 96.
  const ModelState* s = plan.engine;
  REQUIRE(s[0].params == 2 * 1096);
  REQUIRE(s[0].grads == 4 * 1096);
  REQUIRE(s[0].master == 4 * 1096);
  REQUIRE(s[0].moments == 8 * 1096);
  REQUIRE(s[0].total() == 18 * 1096);
  for (int z : {1, 2}) {
    REQUIRE(s[z].params == 2 * 1096);
    REQUIRE(s[z].master == 4 * (226 + 96));
    REQUIRE(s[z].moments == 8 * (226 + 96));
    REQUIRE(s[z].gathered == 0);
  }
  REQUIRE(s[1].grads == 4 * 1096);
  REQUIRE(s[1].open_grads == 0);
  // Stage 2/3 keep the gradient shard, and at the peak (the backward of layer 1, the MoE layer)
  // the gradients in flight: the embedding and final norm (128 + 8) and layer 1 (304 + 192).
  for (int z : {2, 3}) {
    REQUIRE(s[z].grads == 4 * (226 + 96));
    REQUIRE(s[z].open_grads == 4 * (128 + 8 + 304 + 192));
  }
  // Stage 3: the parameter shard, plus layer 1 gathered for its backward and layer 0 (464)
  // prefetched for the next.
  REQUIRE(s[3].params == 2 * (226 + 96));
  REQUIRE(plan.largest_module == 304 + 192);
  REQUIRE(plan.layer_modules == std::vector<int64_t>{464, 304 + 192});
  REQUIRE(plan.head_module == 128);  // tied: the LM head is the "embed" module
  REQUIRE(s[3].gathered == 2 * (304 + 192 + 464));
  REQUIRE(s[3].total() == 644 + 1920 + 1288 + 2528 + 1288 + 2576);
  // The paper's 2 + 2 + 12 model on the same shards: dense 904 over 4, expert 192 over 2.
  REQUIRE(plan.paper[0] == 16.0 * 904 + 16.0 * 192);
  REQUIRE(plan.paper[1] == (4.0 * 904 + 12.0 * 904 / 4) + (4.0 * 192 + 12.0 * 192 / 2));
  REQUIRE(plan.paper[2] == (2.0 * 904 + 14.0 * 904 / 4) + (2.0 * 192 + 14.0 * 192 / 2));
  REQUIRE(plan.paper[3] == 16.0 * 904 / 4 + 16.0 * 192 / 2);

  // On the CPU (f32): the parameters are their own master; 16 bytes per parameter at stage 0.
  Plan cpu = make_plan(hand_config(), 1, "cpu");
  REQUIRE(cpu.engine[0].total() == 16 * 1288);
  REQUIRE(cpu.engine[0].master == 0);
  REQUIRE(cpu.engine[3].params == 4 * 1288);  // one rank: the shard is everything
}

TEST_CASE("active parameters count the experts a router really routes to, by hand", "[train][plan]") {
  // hand_config: dense 904 with the router weight 8*4 = 32, 4 experts of 96 parameters.
  struct Case {
    std::string router;
    int64_t top_k;
    double capacity_factor;
    int64_t active;
  };
  const std::vector<Case> cases = {
      {"softmax_topk", 1, 0.0, 904 + 96},
      {"softmax_topk", 2, 0.0, 904 + 2 * 96},
      {"hash", 2, 0.0, 904 - 32 + 96},              // one expert per token whatever moe.top_k says
      {"expert_choice", 1, 1.5, 904 + 96 * 3 / 2},  // c*T/E tokens per expert: c experts per token
  };
  for (const Case& k : cases) {
    INFO(k.router << " top_k " << k.top_k);
    Config c = hand_config();
    c.moe.router = k.router;
    c.moe.top_k = k.top_k;
    c.moe.capacity_factor = k.capacity_factor;
    const ParamCounts p = count_params(c.model, c.moe);
    REQUIRE(p.active == k.active);
    REQUIRE(Model(c.model, c.moe).active_params() == k.active);  // what the trainer's MFU uses
    // FLOPs per token (and so MFU): 6 N + 12 L d S with N the active parameters.
    REQUIRE(flops_per_token(c.model, p).active == 6.0 * static_cast<double>(k.active) + 12.0 * 2 * 8 * 4);
  }
}

TEST_CASE("activations of a small config, by hand", "[train][plan]") {
  Config c = hand_config();
  c.moe.experts_impl = "loop";  // the count below is the loop's (its input and output rows kept)
  c.train.head_chunk_tokens = 0;  // the head that keeps its logits (the chunked one: below)
  Plan plan = make_plan(c, 1);
  const ActivationPlan& a = plan.activations;
  // T = 2 sequences x 4 = 8 tokens; bf16 (2 bytes) activations, f32 (4) statistics.
  REQUIRE(a.tokens == 8);
  // attn-norm out, q, k, v, attention out, residual, block out: 7 x [T,8] bf16; rstd x 2 and
  // the log-sum-exp of 2 heads: 4 x [T] f32.
  REQUIRE(a.attention_layer == 7 * 8 * 8 * 2 + 4 * 8 * 4);
  REQUIRE(a.dense_ffn == 8 * (8 + 16) * 2);  // the FFN-norm output [T,8], SwiGLU h [T,16] (a is made again)
  // MoE: the FFN-norm output (the router's input) [T,8]; logits, scores [T,4] f32; ids i32 +
  // weights f32 [T,1]; (the Switch gradient is one row of E numbers); sorted tokens + slot
  // positions i32 [T]; expert input, h [.,8], output rows: 8 rows.
  REQUIRE(a.moe_ffn == 8 * 8 * 2 + 2 * 8 * 4 * 4 + 8 * 8 + 2 * 8 * 4 + 8 * (8 + 8 + 8) * 2);
  REQUIRE(a.logits == 8 * 8 * 2 + 8 * 4 + 8 * 16 * 2 + 8 * 4);  // final norm out + rstd, logits, lse
  REQUIRE(a.kept == 8 * 8 * 2 + (1024 + 384) + (1024 + 896) + 448);
  REQUIRE(a.logits_grad == 8 * 16 * 2 + 8 * 8 * 2);
  // The attention backward: dy, the residual gradient, d out and d x [T,8], d q, d k, d v.
  REQUIRE(a.backward_working == 8 * 2 * (3 * 8 + 2 * 8 + 2 * 8));
  REQUIRE(a.peak == 3904 + 64 + 896);  // the logit gradients (384) are freed before the blocks' backward
  REQUIRE(plan.peak == 18 * 1288 + 4864);

  // The chunked head does not pay here: 8 tokens x 16 logits in bf16 (256 bytes) against the tied
  // head's f32 gradient [16,8] and d hidden (640): the logits are kept (head_chunk_gains).
  c.train.head_chunk_tokens = 4096;
  REQUIRE_FALSE(make_plan(c, 1).activations.head_chunked);
  // With 32 tokens and a vocabulary of 64 (4096 bytes of logits against 2560) it keeps the final
  // norm's rstd [T] f32, d hidden [T,8] and the head's gradient [64,8] f32 instead; while it runs,
  // the hidden states, one chunk's logits (all 32 tokens here) and the lse; nothing of it is left
  // for the backward's peak.
  c.model.vocab_size = 64;
  c.train.micro_batch_size = 8;
  c.train.head_chunk_tokens = 0;
  const ActivationPlan whole = make_plan(c, 1).activations;
  c.train.head_chunk_tokens = 4096;
  const ActivationPlan chunked = make_plan(c, 1).activations;
  REQUIRE(chunked.head_chunked);
  REQUIRE(chunked.logits == 32 * 4 + 32 * 8 * 2 + 64 * 8 * 4);
  REQUIRE(chunked.head_forward == 32 * 8 * 2 + 32 * 64 * 2 + 32 * 4);
  REQUIRE(chunked.logits_grad == 0);
  REQUIRE(chunked.kept == whole.kept - whole.logits + chunked.logits);
  const int64_t ids = 2 * 32 * 4;
  REQUIRE(chunked.forward_peak == chunked.kept + ids + 32 * 4 + chunked.head_forward);
  REQUIRE(chunked.peak == std::max(chunked.forward_peak, chunked.kept + ids + whole.backward_working));
}

TEST_CASE("the GPU estimate matches the peaks measured on an H200", "[train][plan]") {
  // peak_memory_bytes of `moe bench train CONFIG --warmup 3 --steps 10 --breakdown` on one H200
  // (bf16; experiments/perf/results/speed_2026-12-04_memory/), the engine as the plan models it:
  // grouped experts (the CUDA default), the chunked head, no kept post-activations; MoE-small with
  // its shared experts on the side stream (run4; 19777776084 bytes on one stream, run2). Each
  // estimate was within 80 KB of its measurement.
  struct Case {
    const char* name;
    Config config;
    int64_t measured;
  };
  auto current = [](Config c) {
    c.moe.experts_impl = "grouped";
    c.train.head_chunk_tokens = 4096;
    return c;
  };
  const Case cases[] = {{"gpt2_small_dense", current(gpt2_small()), 6518050508},
                        {"gpt2_small_moe64", current(gpt2_small_moe64()), 13480732628},
                        {"moe_small", current(moe_small()), 19802941908}};
  for (const Case& k : cases) {
    const int64_t estimate = make_plan(k.config, 1).peak;
    const double error = static_cast<double>(estimate - k.measured) / static_cast<double>(k.measured);
    INFO(k.name << ": estimate " << estimate << ", measured " << k.measured << " (" << 100 * error << "%)");
    REQUIRE(std::abs(error) < 0.001);
  }
  // Earlier records, when every FFN kept its post-activation and the head its logits (and, the
  // oldest, [T,E] balancing gradients): the engine now keeps less than each, and the plan, which
  // models the engine as it is, lands below them.
  //  - experiments/perf/results/bench_gpt2_small_dense.json (2026-11-28): 10707700736
  //  - experiments/perf/results/bench_gpt2_small_moe64.json: 21099616512 (commit d82bc46), 21154139136
  //  - experiments/perf/moe_small.toml: 27801734656 ([T,E] Switch gradient), 27323190784; on two
  //    H200s (rank 0, --set parallel.zero=0..3 / parallel.ep=2): 27801734656, 23192089600 (ZeRO-1),
  //    22713545728 (ZeRO-1 re-measured), 22545422080 (ZeRO-3), 23941458472 (EP 2)
  struct Record {
    const char* name;
    Config config;
    int world;
    int64_t measured;
  };
  Config zero1 = moe_small(), zero3 = moe_small(), ep2 = moe_small();
  zero1.parallel.zero = 1;
  zero3.parallel.zero = 3;
  ep2.parallel.ep = 2;
  const Record records[] = {{"gpt2_small_dense", current(gpt2_small()), 1, 10707700736},
                            {"gpt2_small_moe64", current(gpt2_small_moe64()), 1, 21099616512},
                            {"moe_small", current(moe_small()), 1, 27323190784},
                            {"moe_small ZeRO-1, 2 GPUs", current(zero1), 2, 22713545728},
                            {"moe_small ZeRO-3, 2 GPUs", current(zero3), 2, 22545422080},
                            {"moe_small EP 2", current(ep2), 2, 23941458472}};
  for (const Record& r : records) {
    const int64_t estimate = make_plan(r.config, r.world).peak;
    INFO(r.name << ": estimate " << estimate << ", recorded before " << r.measured);
    REQUIRE(estimate < r.measured);
  }
}

TEST_CASE("the GPU estimate lands just below the peaks recorded on four H200s", "[train][plan]") {
  // Rank 0's peak_memory_bytes of experiments/scaling/run_scaling.sh on an nvidia-h200-x4 host
  // (2026-11-28; experiments/scaling/results/h200x4/bench_*.json): `moe bench train CONFIG
  // --set train.grad_accum=4*tp*pp --set parallel.... --warmup 2 --steps 5`. Every estimate was
  // 0.1% (one GPU) to 1.7% (EP) low: the learned router at initialisation sends rank 0's experts
  // more rows than the balanced share the plan assumes. The TP and PP layouts are the plan's first
  // GPU calibration (before: CPU ranks only).
  const char* source = std::getenv("MOE_SOURCE_DIR");  // set by CTest (tests/CMakeLists.txt)
  const std::string root = source ? source : ".";
  struct Record {
    const char* config;
    int world;
    std::vector<std::string> layout;
    int grad_accum;  // 4 micro-batches per GPU: 4 x tp x pp per replica
    int64_t measured;
  };
  const std::string small = "experiments/perf/moe_small.toml", large = "experiments/scaling/moe_1b.toml";
  const std::vector<std::string> ep4 = {"parallel.ep=4", "parallel.zero=1"},
                                  ep2 = {"parallel.ep=2", "parallel.zero=1"},
                                  tp2 = {"parallel.tp=2", "parallel.ep=2", "parallel.zero=1"},
                                  pp2 = {"parallel.pp=2", "parallel.ep=2", "parallel.zero=1"};
  const Record records[] = {
      {small.c_str(), 1, {}, 4, 27323584000},  {small.c_str(), 2, ep2, 4, 22789606408},
      {small.c_str(), 4, ep4, 4, 19426851664}, {small.c_str(), 4, ep2, 4, 20402478672},
      {small.c_str(), 4, tp2, 8, 15293955440}, {small.c_str(), 4, pp2, 8, 16657726696},
      {large.c_str(), 1, {}, 4, 32697378816},  {large.c_str(), 2, ep2, 4, 22414190208},
      {large.c_str(), 4, ep4, 4, 16599548736}, {large.c_str(), 4, ep2, 4, 18308203896},
      {large.c_str(), 4, tp2, 8, 17199403816}, {large.c_str(), 4, pp2, 8, 15217176368}};
  for (const Record& r : records) {
    std::vector<std::string> overrides = r.layout;
    overrides.push_back("train.grad_accum=" + std::to_string(r.grad_accum));
    // Recorded with the per-expert loop keeping its post-activation (the loop still keeps its
    // input and output rows: the closest the plan comes to that engine) and the head its logits.
    overrides.push_back("moe.experts_impl=loop");
    overrides.push_back("train.head_chunk_tokens=0");
    const Config config = load_config(root + "/" + r.config, overrides);
    const int64_t estimate = make_plan(config, r.world, "cuda").peak;
    const double error = static_cast<double>(estimate - r.measured) / static_cast<double>(r.measured);
    INFO(r.config << " on " << r.world << " GPUs " << (r.layout.empty() ? "" : r.layout.front()) << ": estimate "
                  << estimate << ", measured " << r.measured << " (" << 100 * error << "%)");
    // Within 2% when recorded; every FFN has since stopped keeping its post-activation, which
    // the plan no longer counts: it lands below each record by up to that much.
    REQUIRE(estimate < r.measured);
    REQUIRE(error > -0.12);
  }
}

TEST_CASE("the CPU estimate matches the allocator's high-water mark of real steps", "[train][plan]") {
  // Tiny configs trained for real on the CPU (f32) on this job's ranks (1, and 2 or 4 under
  // mpirun: then also ZeRO-1/2/3 and expert parallelism). The plan models the same allocations, so the
  // two agreed to the byte when written; 2% leaves room for small drift. The plan is the busiest
  // rank's (rank 0 holds the largest ZeRO shard); the other ranks stay at or below it. Expert
  // parallelism uses position hashing, which gives every expert the same rows: the plan assumes
  // balanced routing (a learned router at initialisation put 2% more on rank 0 in one trial).
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size();
  test::TempDir dir("moe-plan-cpu");
  Config base;
  base.model.vocab_size = 64;
  base.model.d_model = 16;
  base.model.num_layers = 3;
  base.model.num_heads = 4;
  base.model.num_kv_heads = 2;
  base.model.seq_len = 8;
  base.model.d_ff = 32;
  base.moe.num_experts = 4;
  base.moe.top_k = 2;
  base.moe.d_expert = 8;
  base.moe.first_dense = 1;
  base.train.micro_batch_size = 4;
  base.train.grad_accum = 2;
  base.train.device = "cpu";
  base.train.run_dir = dir.str("run");
  std::vector<std::pair<std::string, Config>> cases;
  Config dense = base;
  dense.moe.num_experts = 0;
  dense.model.norm = "layernorm";
  dense.model.positions = "learned";
  dense.model.activation = "gelu";
  dense.model.tie_embeddings = false;
  cases.emplace_back("dense", dense);
  cases.emplace_back("moe", base);
  Config shared = base;
  shared.moe.num_shared_experts = 2;
  shared.moe.shared_gate = true;
  shared.moe.z_loss_coef = 1e-3;
  cases.emplace_back("shared + gate + z-loss", shared);
  // The grouped experts (the GPU default) recompute their activation and have their input rows
  // dispatched again in backward.
  Config grouped = shared;
  grouped.moe.experts_impl = "grouped";
  cases.emplace_back("grouped experts", grouped);
  Config noisy = base;
  noisy.moe.router = "noisy_topk";
  noisy.moe.load_loss_coef = 1e-2;
  noisy.moe.importance_loss_coef = 1e-2;
  cases.emplace_back("noisy top-k", noisy);
  Config choice = base;
  choice.moe.router = "expert_choice";
  choice.moe.capacity_factor = 1.5;
  cases.emplace_back("expert choice", choice);
  Config hash = base;
  hash.moe.router = "hash";
  hash.moe.top_k = 1;
  cases.emplace_back("hash", hash);
  Config recompute = base;
  recompute.train.recompute = true;
  cases.emplace_back("recompute", recompute);
  Config global = base;
  global.moe.balance_scope = "global_batch";
  global.moe.granularity = 2;
  cases.emplace_back("global batch scope, fine-grained", global);
  Config f64 = base;
  f64.train.dtype = "f64";
  cases.emplace_back("f64", f64);
  if (ranks > 1) {
    for (int zero = 1; zero <= 3; ++zero) {
      Config z = shared;
      z.moe.expert_bias_rate = 1e-3;  // a buffer: kept in full beside the sharded master
      z.moe.router = "sigmoid";
      z.moe.z_loss_coef = 0;
      // The shared-expert gate's backward term is one [T,d] (2048 bytes) high on this tiny config
      // (the "shared + gate + z-loss" case carries it too), which sharded gradients make 2.4% of
      // the ZeRO-2/3 peaks: the ZeRO cases keep the shared experts without the gate.
      z.moe.shared_gate = false;
      z.parallel.zero = zero;
      cases.emplace_back("ZeRO-" + std::to_string(zero), z);
    }
    Config balanced = base;
    balanced.moe.router = "hash";
    balanced.moe.hash_kind = "position";  // seq_len 8 over 4 experts: 2 positions each
    balanced.moe.top_k = 1;
    for (int ep : {2, 4}) {
      if (ranks % ep != 0) continue;
      for (int zero : {0, 3}) {
        Config e = balanced;
        e.parallel.ep = ep;
        e.parallel.zero = zero;
        e.moe.num_shared_experts = ep == 2 ? 1 : 0;
        cases.emplace_back("ep " + std::to_string(ep) + ", ZeRO-" + std::to_string(zero), e);
      }
    }
    // Micro-batch pairs: both micro-batches' activations alive at once.
    Config pairs = balanced;
    pairs.parallel.ep = 2;
    pairs.parallel.a2a_overlap = true;
    pairs.parallel.a2a_overlap_microbatches = true;
    pairs.moe.num_shared_experts = 1;
    cases.emplace_back("ep 2, micro-batch pairs", pairs);
    // Tensor and pipeline parallelism (issue 5): heads, widths and vocabulary split; the MoE
    // layer routes half the tokens per TP rank through whole experts; stages of 2 layers.
    Config split = balanced;
    split.model.num_layers = 4;
    split.moe.num_shared_experts = 1;
    split.train.grad_accum = 2;
    Config tp = split;
    tp.parallel.tp = 2;
    cases.emplace_back("tp 2", tp);
    // Sequence parallelism: norms and residuals on half the tokens, gathered around the matrices.
    tp.parallel.sequence_parallel = true;
    cases.emplace_back("tp 2, sequence parallel", tp);
    Config sp_dense = dense;
    sp_dense.parallel.tp = 2;
    sp_dense.parallel.sequence_parallel = true;
    cases.emplace_back("dense, tp 2, sequence parallel", sp_dense);
    tp.train.recompute = true;
    cases.emplace_back("tp 2, sequence parallel, recompute", tp);
    Config pp = split;
    pp.parallel.pp = 2;
    cases.emplace_back("pp 2", pp);
    pp.train.recompute = true;
    cases.emplace_back("pp 2, recompute", pp);
    // Interleaved 1F1B: stage 0 holds layers 0 and 2, up to 4 chunk activations in flight.
    Config interleaved = split;
    interleaved.parallel.pp = 2;
    interleaved.parallel.pp_virtual = 2;
    cases.emplace_back("pp 2, interleaved over 2 virtual stages", interleaved);
  }
  for (auto& [name, config] : cases) {
    validate_config(config);
    const int64_t measured = measured_cpu_peak(config, *world);
    const int64_t estimate = make_plan(config, ranks).peak;
    // The plan is the busiest rank's: rank 0 (the largest ZeRO shard) or the busiest stage.
    std::vector<double> busiest{static_cast<double>(measured)};
    world->all_reduce_max(busiest);
    INFO(name << " on " << ranks << " rank(s), rank " << world->rank() << ": estimate " << estimate << ", measured "
              << measured << ", busiest rank " << busiest[0]);
    REQUIRE(std::abs(static_cast<double>(estimate) - busiest[0]) <= 0.02 * busiest[0]);
    REQUIRE(static_cast<double>(measured) <= 1.02 * static_cast<double>(estimate));
  }
}

TEST_CASE("ZeRO-2 and ZeRO-3 save the memory the plan predicts on CPU ranks", "[train][plan][zero]") {
  // A model whose state outweighs its activations (8 layers of d 64, one sequence of 8 tokens),
  // with expert parallelism on 4 ranks: each stage's measured high-water mark, and what it saves against the
  // stage below, against the plan. ZeRO-2 drops the full gradient buffer for the shard plus the
  // modules in flight (the embedding and final norm, one block); ZeRO-3 shards the parameters and
  // gathers two blocks (the one in use and the prefetched next).
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size();
  if (ranks == 1) return;  // nothing is sharded over one rank
  test::TempDir dir("moe-plan-zero");
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 64;
  c.model.num_layers = 8;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 4;
  c.model.seq_len = 8;
  c.model.d_ff = 128;
  c.moe.num_experts = 4;
  c.moe.top_k = 1;
  c.moe.d_expert = 64;
  c.moe.router = "hash";
  c.moe.hash_kind = "position";  // balanced expert rows, as the plan assumes
  c.parallel.ep = ranks / 2;  // expert-dp 2: the expert gradients and parameters shard too
  c.train.micro_batch_size = 1;
  c.train.grad_accum = 2;
  c.train.device = "cpu";
  c.train.run_dir = dir.str("run");
  std::vector<PeakPair> peaks(4);
  for (int zero = 1; zero <= 3; ++zero) {
    Config z = c;
    z.parallel.zero = zero;
    peaks[zero] = require_planned_peak(z, *world, "ZeRO-" + std::to_string(zero));
  }
  for (int zero = 2; zero <= 3; ++zero) {
    require_planned_saving(peaks[zero - 1], peaks[zero],
                           "ZeRO-" + std::to_string(zero) + " against ZeRO-" + std::to_string(zero - 1));
  }
}

TEST_CASE("sequence parallelism saves the activation memory the plan predicts on CPU ranks", "[train][plan][tp]") {
  // Activations outweigh the model state (4 sequences of 32 tokens, d 64): tensor parallelism over
  // every rank of the job without and with sequence parallelism, whose norms, residuals and FFN
  // inputs hold 1/tp of the tokens. Each peak against the plan, and the saving against the plan's.
  auto world = make_world_communicator(Device::cpu());
  const int ranks = world->size();
  if (ranks == 1) return;  // nothing to split over one rank
  test::TempDir dir("moe-plan-sp");
  Config c;
  c.model.vocab_size = 64;
  c.model.d_model = 64;
  c.model.num_layers = 4;
  c.model.num_heads = 4;
  c.model.num_kv_heads = 4;
  c.model.seq_len = 32;
  c.model.d_ff = 64;
  c.moe.num_experts = 4;
  c.moe.top_k = 1;
  c.moe.d_expert = 32;
  c.moe.first_dense = 1;
  c.moe.router = "hash";
  c.moe.hash_kind = "position";  // balanced expert rows, as the plan assumes
  c.moe.num_shared_experts = 1;
  c.train.micro_batch_size = 4;
  c.train.grad_accum = 1;
  c.train.device = "cpu";
  c.train.run_dir = dir.str("run");
  c.parallel.tp = ranks;
  const PeakPair tp = require_planned_peak(c, *world, "tp " + std::to_string(ranks));
  c.parallel.sequence_parallel = true;
  const PeakPair sp = require_planned_peak(c, *world, "tp " + std::to_string(ranks) + " with sequence parallelism");
  require_planned_saving(tp, sp, "sequence parallelism");
}

TEST_CASE("pipeline and tensor parallelism split the layers and the matrices", "[train][plan]") {
  Config c = gpt2_small_moe64();
  c.parallel.pp = 4;
  c.parallel.tp = 2;
  c.parallel.ep = 2;
  c.parallel.zero = 1;
  Plan plan = make_plan(c, 16);  // dp 2, ep 2, expert-dp 1
  REQUIRE(plan.topology.dp == 2);
  REQUIRE(plan.stage_layers.size() == 3);
  Plan one = make_plan(gpt2_small_moe64(), 1);
  REQUIRE(plan.peak < one.peak / 4);
  REQUIRE(plan.activations.all_to_all > 0);
  REQUIRE(one.activations.all_to_all == 0);
  // Uneven stages: 12 layers on 5 stages -> 3, 3, 2, 2, 2.
  c.parallel.pp = 5;
  c.parallel.tp = 1;
  c.parallel.ep = 1;
  Plan five = make_plan(c, 5);
  REQUIRE(five.stage_layers.size() >= 2);
  REQUIRE(five.stage_layers.size() <= 3);
  // Interleaved over 2 virtual stages: 12 layers in 4 runs of 3; stage 0 holds 0-2 and 6-8 and
  // at most 2 (p - s - 1) + (v - 1) p + 1 = 5 chunk activations (3 micro-batches' worth), stage 1
  // holds 3-5 and 9-11 and 3 (2 micro-batches' worth, with the head).
  Config v = gpt2_small_moe64();
  v.parallel.pp = 2;
  v.parallel.pp_virtual = 2;
  v.train.grad_accum = 4;
  Plan interleaved = make_plan(v, 2);
  if (interleaved.stage == 0) {
    REQUIRE(interleaved.stage_layers == std::vector<int>{0, 1, 2, 6, 7, 8});
    REQUIRE(interleaved.activations.micro_batches == 3);
  } else {
    REQUIRE(interleaved.stage_layers == std::vector<int>{3, 4, 5, 9, 10, 11});
    REQUIRE(interleaved.activations.micro_batches == 2);
  }
}

TEST_CASE("bad plan input names the problem", "[train][plan]") {
  Config c = gpt2_small_moe64();
  REQUIRE_THROWS_WITH(make_plan(c, 0), Contains("--world 0 must be at least 1"));
  c.parallel.tp = 2;
  c.parallel.pp = 2;
  REQUIRE_THROWS_WITH(make_plan(c, 6), Contains("world size 6 is not divisible by parallel.tp * parallel.pp = 4"));
  c = gpt2_small_moe64();
  c.parallel.ep = 3;
  REQUIRE_THROWS_WITH(make_plan(c, 6), Contains("parallel.ep = 3 does not divide the number of routed experts 64"));
  REQUIRE_THROWS_WITH(make_plan(c, 4), Contains("parallel.ep = 3 does not divide the data-parallel size 4"));
  c = gpt2_small();
  c.parallel.pp = 16;
  REQUIRE_THROWS_WITH(make_plan(c, 16), Contains("model.num_layers = 12 cannot fill parallel.pp = 16"));
  REQUIRE_THROWS_WITH(make_plan(gpt2_small(), 1, "tpu"), Contains("unknown device \"tpu\""));
  c = gpt2_small();
  c.model.encoder_layers = 6;  // an encoder-decoder: not modelled (checked before validation would)
  REQUIRE_THROWS_WITH(make_plan(c, 1), Contains("model.encoder_layers = 6 (an encoder-decoder, with cross-attention"));
  c = gpt2_small();
  c.train.dtype = "f64";
  REQUIRE_THROWS_WITH(make_plan(c, 1), Contains("train.dtype = \"f64\" is not supported on CUDA"));
  REQUIRE_THROWS_WITH(zero_paper_bytes(1e9, 4, 8), Contains("ZeRO stage 4 is not 0, 1, 2 or 3"));
  REQUIRE_THROWS_WITH(zero_paper_bytes(1e9, 1, 0), Contains("the data-parallel size 0 must be at least 1"));
}

TEST_CASE("the moe plan command prints the plan and the table, and rejects bad use", "[train][plan]") {
  if (std::getenv("MOE_BINARY") == nullptr || !std::filesystem::exists(std::getenv("MOE_BINARY"))) {
    WARN("MOE_BINARY is not set or not built (run through ctest): skipping the command check");
    return;
  }
  if (make_world_communicator(Device::cpu())->size() > 1) return;  // once, in the one-process run
  test::TempDir dir("moe-plan-cli");
  std::ofstream(dir.str("c.toml")) << "[model]\nvocab_size = 64\nd_model = 16\nnum_layers = 2\nnum_heads = 2\n"
                                      "num_kv_heads = 2\nseq_len = 8\n[moe]\nnum_experts = 4\ntop_k = 2\n";
  int status = 0;
  std::string out = run_binary("plan " + dir.str("c.toml") + " --world 4 --set parallel.ep=2 --set parallel.zero=2",
                               status);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("topology: 4 ranks = pp 1 x dp 4 x tp 1"));
  REQUIRE_THAT(out, Contains("<- parallel.zero"));
  REQUIRE_THAT(out, Contains("ZeRO-2"));
  out = run_binary("plan " + dir.str("c.toml") + " --world 2 --set parallel.tp=2 --set parallel.sequence_parallel=true",
                   status);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("(sequence parallelism: norms, residual stream and stage input hold 32 tokens per TP rank)"));
  out = run_binary("plan " + dir.str("c.toml") + " --set parallel.sequence_parallel=true", status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("parallel.sequence_parallel = true needs parallel.tp > 1"));
  out = run_binary("plan --zero-table", status);
  REQUIRE(status == 0);
  REQUIRE_THAT(out, Contains("| 16 | 35.62 | 21.56 | 7.5 | 608 | 368 | 128 | 4750 | 2875 | 1000 |"));
  out = run_binary("plan " + dir.str("c.toml") + " --world 3 --set parallel.ep=2", status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("parallel.ep = 2 does not divide the data-parallel size 3"));
  out = run_binary("plan", status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("moe plan needs a CONFIG file (or --zero-table)"));
  out = run_binary("plan " + dir.str("c.toml") + " --zero-table", status);
  REQUIRE(status != 0);
  REQUIRE_THAT(out, Contains("moe plan --zero-table takes no config"));
}
