// `moe bench train CONFIG [--warmup N] [--steps N] [--breakdown] [--grouped-kernel K]`: tokens/s, MFU and peak memory over timed
// steps after warm-up, printed by rank 0 as one JSON line. Without data.train_path the batches
// are random tokens (speed does not depend on the values). `moe bench dispatch`, `moe bench layer`
// and `moe bench op` time one piece alone; `moe bench generate` times generation.
#include <cstdio>
#include <filesystem>

#include "src/cli/commands.h"
#include "parallel/topology.h"
#include "src/cli/run_setup.h"
#include "src/ops/ops.h"
#include "src/tools/bench_dispatch.h"
#include "src/tools/bench_generate.h"
#include "src/tools/bench_layer.h"
#include "src/tools/bench_op.h"
#include "src/train/device_select.h"
#include "src/util/log.h"

namespace moe {

namespace {

// `moe bench dispatch CONFIG`: the expert-parallel all-to-all dispatcher alone, over the EP
// groups of parallel.ep, at the config's tokens per micro-batch; one JSON line per run.
void add_dispatch_bench(CLI::App& bench, CommandRunner& run) {
  auto* cmd = bench.add_subcommand("dispatch", "time the all-to-all expert dispatcher of a config");
  auto options = std::make_shared<RunOptions>();
  auto warmup = std::make_shared<int64_t>(3);
  auto steps = std::make_shared<int64_t>(20);
  add_run_options(*cmd, *options);
  cmd->add_option("--warmup", *warmup, "untimed iterations first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--steps", *steps, "timed iterations")->check(CLI::PositiveNumber);
  cmd->callback([&run, options, warmup, steps] {
    log::human_to_stderr();  // at parse time: stdout carries the JSON line alone
    run = [options, warmup, steps](MpiEnv& env) {
      Config config = load_config(options->config_path, options->overrides);
      auto world = make_world_communicator(select_device(config.train, env.local_rank()));
      Topology topology = Topology::from_config(config, world->size(), world->rank());
      ProcessGroups groups = make_process_groups(*world, topology);
      DispatchBenchResult r = bench_dispatch(config, *groups.ep, *warmup, *steps, config.train.seed);
      nlohmann::json out = to_json(r);
      out["config"] = options->config_path;
      out["ep"] = groups.ep->size();
      out["device"] = groups.ep->device().str();
      if (world->rank() == 0) std::printf("%s\n", out.dump().c_str());
      return 0;
    };
  });
}

// --grouped-kernel: which CUDA grouped matmul kernel the bench runs (benches compare them).
void add_grouped_kernel_option(CLI::App& cmd, std::string& kernel) {
  cmd.add_option("--grouped-kernel", kernel,
                 "CUDA grouped matmul kernel: auto | mma_sync | wgmma | wgmma_narrow (wgmma with 128-wide tiles only)")
      ->check(CLI::IsMember({"auto", "mma_sync", "wgmma", "wgmma_narrow"}));
}

// `moe bench op NAME [--batch B --seq S --heads H --kv-heads H --head-dim D --causal|--no-causal
// --width W --vocab V --experts E --tokens-per-expert T --skew S --d-model D --d-expert F --top-k K
// --warmup N --iters N --device D --grouped-kernel K]`: one kernel at one shape; one JSON line (median times, TFLOP/s).
void add_op_bench(CLI::App& bench, CommandRunner& run) {
  std::string names;
  for (const OpBench& b : op_benches()) names += (names.empty() ? "" : "; ") + b.name + ": " + b.what;
  auto* cmd = bench.add_subcommand("op", "time one kernel at a given shape (" + names + ")");
  auto o = std::make_shared<OpBenchOptions>();
  auto name = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("auto");
  cmd->add_option("op", *name, "the op to time")->required();
  cmd->add_option("--batch", o->batch, "sequences")->check(CLI::PositiveNumber);
  cmd->add_option("--seq", o->seq_len, "tokens per sequence")->check(CLI::PositiveNumber);
  cmd->add_option("--heads", o->heads, "query heads")->check(CLI::PositiveNumber);
  cmd->add_option("--kv-heads", o->kv_heads, "key/value heads (default: --heads)")->check(CLI::PositiveNumber);
  cmd->add_option("--head-dim", o->head_dim, "head dimension")->check(CLI::PositiveNumber);
  cmd->add_flag("--causal,!--no-causal", o->causal, "causal mask (default) or none");
  cmd->add_option("--doc-len", o->doc_len, "attention: documents of this many tokens (document masking; 0 = none)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--width", o->width, "model width (the add + norm benches)")->check(CLI::PositiveNumber);
  cmd->add_option("--vocab", o->vocab, "cross_entropy: vocabulary (logits per token)")->check(CLI::PositiveNumber);
  cmd->add_option("--experts", o->experts, "grouped_gemm, balance, permute: experts")->check(CLI::PositiveNumber);
  cmd->add_option("--tokens-per-expert", o->tokens_per_expert, "grouped_gemm: rows per expert (balanced)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--skew", o->skew, "grouped_gemm: uneven experts, rows as exp(skew (e/(E-1) - 1/2)); 0 = balanced")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--d-model", o->d_model, "grouped_gemm, permute: model width")->check(CLI::PositiveNumber);
  cmd->add_option("--d-expert", o->d_expert, "grouped_gemm: expert width")->check(CLI::PositiveNumber);
  cmd->add_option("--top-k", o->top_k, "balance, permute: slots per token")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup, "untimed iterations first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--iters", o->iters, "timed iterations (the median is reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--device", *device, "auto | cpu | cuda")->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  auto grouped_kernel = std::make_shared<std::string>("auto");
  add_grouped_kernel_option(*cmd, *grouped_kernel);
  cmd->callback([&run, o, name, device, grouped_kernel] {
    log::human_to_stderr();  // at parse time: stdout carries the JSON line alone
    run = [o, name, device, grouped_kernel](MpiEnv&) {
      TrainConfig train;
      train.device = *device;
      const Device where = select_device(train, 0);
      ops::set_grouped_matmul_kernel(*grouped_kernel);
      nlohmann::json result = bench_op(*name, *o, where);
      result["grouped_kernel"] = ops::grouped_matmul_kernel(where);
      std::printf("%s\n", result.dump().c_str());
      return 0;
    };
  });
}

// `moe bench layer CONFIG [--tokens N --warmup N --iters N --breakdown]`: one MoE layer of the
// config (its [model] width and [moe] section) against the dense GEMM chain of equal FLOPs.
void add_layer_bench(CLI::App& bench, CommandRunner& run) {
  auto* cmd = bench.add_subcommand("layer", "time one MoE layer of a config against the dense GEMM chain of equal FLOPs");
  auto options = std::make_shared<RunOptions>();
  auto o = std::make_shared<LayerBenchOptions>();
  add_run_options(*cmd, *options);
  cmd->add_option("--tokens", o->tokens, "tokens through the layer")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", o->warmup, "untimed iterations first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--iters", o->iters, "timed iterations (the median is reported)")->check(CLI::PositiveNumber);
  cmd->add_flag("--breakdown", o->breakdown, "then time as many iterations again with every op timed by kind");
  add_grouped_kernel_option(*cmd, o->grouped_kernel);
  cmd->callback([&run, options, o] {
    log::human_to_stderr();  // at parse time: stdout carries the JSON line alone
    run = [options, o](MpiEnv& env) {
      Config config = load_config(options->config_path, options->overrides);
      ops::set_grouped_matmul_kernel(o->grouped_kernel);
      nlohmann::json out = bench_layer(config, select_device(config.train, env.local_rank()), *o);
      out["config"] = options->config_path;
      std::printf("%s\n", out.dump().c_str());
      return 0;
    };
  });
}

}  // namespace

// `moe bench generate CONFIG|RUN [--batch B --prompt-len P --new-tokens N --device D]`: prefill and
// decode tokens/s with and without the KV cache; a config's model gets random weights, a run
// directory or checkpoint its trained ones. One JSON line.
void add_generate_bench(CLI::App& bench, CommandRunner& run) {
  auto* cmd = bench.add_subcommand("generate", "time generation (prefill and decode tokens/s, with and without the KV cache)");
  auto source = std::make_shared<std::string>();
  auto device = std::make_shared<std::string>("auto");
  auto o = std::make_shared<GenerateBenchOptions>();
  cmd->add_option("source", *source, "a config file (random weights) or a run/checkpoint directory")->required();
  cmd->add_option("--batch", o->batch, "prompts generated together")->check(CLI::PositiveNumber);
  cmd->add_option("--prompt-len", o->prompt_len, "tokens per prompt (0 = half of model.seq_len)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--new-tokens", o->new_tokens, "tokens generated per prompt (0 = the rest of model.seq_len)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", o->seed, "seed of the random prompt tokens");
  cmd->add_option("--device", *device, "auto | cpu | cuda");
  cmd->callback([&run, source, device, o] {
    log::human_to_stderr();  // at parse time: stdout carries the JSON line alone
    run = [source, device, o](MpiEnv&) {
      const bool from_run = std::filesystem::is_directory(*source);
      InferenceModel m = from_run ? load_inference_model(resolve_checkpoint_arg("source", *source, ""), *device, true)
                                  : init_inference_model(load_config(*source), *device);
      nlohmann::json out = bench_generate(*m.model, *o);
      out["source"] = *source;
      out["device"] = m.model->params().device().str();
      std::printf("%s\n", out.dump().c_str());
      return 0;
    };
  });
}

void add_bench_command(CLI::App& app, CommandRunner& run) {
  auto* bench = app.add_subcommand("bench", "measure speed and memory");
  bench->require_subcommand(1);
  auto* cmd = bench->add_subcommand("train", "time training steps of a config");
  auto options = std::make_shared<RunOptions>();
  auto warmup = std::make_shared<int64_t>(3);
  auto steps = std::make_shared<int64_t>(10);
  auto breakdown = std::make_shared<bool>(false);
  auto grouped_kernel = std::make_shared<std::string>("auto");
  add_run_options(*cmd, *options);
  add_grouped_kernel_option(*cmd, *grouped_kernel);
  cmd->add_flag("--breakdown", *breakdown,
                "then time as many steps again with every op timed by kind (CUDA events): ms per kind, "
                "device idle time, ops per step");
  cmd->add_option("--warmup", *warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("--steps", *steps, "timed steps")->check(CLI::PositiveNumber);
  add_dispatch_bench(*bench, run);
  add_op_bench(*bench, run);
  add_layer_bench(*bench, run);
  add_generate_bench(*bench, run);
  cmd->callback([&run, options, warmup, steps, breakdown, grouped_kernel] {
    log::human_to_stderr();  // at parse time: stdout carries the JSON line alone
    run = [options, warmup, steps, breakdown, grouped_kernel](MpiEnv& env) {
      ops::set_grouped_matmul_kernel(*grouped_kernel);
      RunContext ctx = setup_run(*options, env);
      nlohmann::json result = ctx.trainer->bench(*warmup, *steps, *breakdown);
      result["config"] = options->config_path;
      result["grouped_kernel"] = ops::grouped_matmul_kernel(ctx.trainer->device());
      if (ctx.world->rank() == 0) std::printf("%s\n", result.dump().c_str());
      return 0;
    };
  });
}

}  // namespace moe
