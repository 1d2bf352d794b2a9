// Tensor and pipeline parallelism (with expert, data and ZeRO parallelism) under mpirun: every
// layout of the world trains the same model as one rank over 5 steps (losses, balancing losses,
// gradient norms, routing counts, validation loss, and the weights after the steps via a
// checkpoint loaded into one rank); checkpoints cross layouts both ways; activation
// recomputation changes nothing. Interleaved 1F1B (parallel.pp_virtual) and sequence parallelism
// (parallel.sequence_parallel) train the same model too.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "src/train/trainer.h"
#include "tests/test_util.h"
#include "tests/train/step_compare.h"
#include "tests/train/train_test_util.h"

using namespace moe;

namespace {

struct Layout {
  int64_t tp = 1, pp = 1, ep = 1, zero = 0;
  int64_t pp_virtual = 1;  // > 1: interleaved 1F1B
  int64_t layers = 4;
  std::string schedule = "1f1b";
  bool recompute = false;
  bool tied = true;
  bool masked_lm = false;  // model.objective = masked_lm (bidirectional, masked targets)
  bool sp = false;         // parallel.sequence_parallel
  bool learned = false;    // learned positions, LayerNorm, untied GELU FFN with biases (dense model)
  bool f64 = false;        // train.dtype = f64 (the moments, f64, cross the stages into the checkpoint)
  std::string name() const {
    return "tp " + std::to_string(tp) + " pp " + std::to_string(pp) + " ep " + std::to_string(ep) + " zero " +
           std::to_string(zero) + " " + schedule + (pp_virtual > 1 ? " virtual " + std::to_string(pp_virtual) : "") +
           " layers " + std::to_string(layers) + (recompute ? " recompute" : "") + (tied ? "" : " untied") +
           (masked_lm ? " masked_lm" : "") + (sp ? " sequence_parallel" : "") + (learned ? " learned" : "") +
           (f64 ? " f64" : "");
  }
};

void run_layout(Communicator& world, Communicator& self, const Layout& layout, const std::string& shared) {
  INFO(layout.name() << " on " << world.size() << " ranks");
  test::TempDir dir("moe-mp-rank" + std::to_string(world.rank()));
  Config c = test::model_parallel_config(dir);
  if (layout.tp == 4) c.model.num_kv_heads = 4;
  c.model.tie_embeddings = layout.tied;
  c.train.run_dir = shared;
  c.train.recompute = layout.recompute;
  c.parallel.tp = layout.tp;
  c.parallel.pp = layout.pp;
  c.parallel.ep = layout.ep;
  c.parallel.zero = layout.zero;
  c.parallel.pp_schedule = layout.schedule;
  if (layout.masked_lm) test::use_masked_lm(c, dir);
  c.parallel.sequence_parallel = layout.sp;
  if (layout.learned) {
    // Every replicated parameter sequence parallelism turns into a partial gradient: LayerNorm
    // weights and biases, the attention output and FFN down biases; the positions join once.
    c.moe.num_experts = 0;
    c.model.positions = "learned";
    c.model.norm = "layernorm";
    c.model.activation = "gelu";
    c.model.ffn_bias = true;
    c.model.attention_bias = "all";
  }
  c.parallel.pp_virtual = layout.pp_virtual;
  c.model.num_layers = layout.layers;
  if (layout.f64) c.train.dtype = "f64";
  validate_config(c);
  if (world.rank() == 0) std::filesystem::remove_all(shared);
  world.barrier();
  Trainer parallel(c, 0, world);

  // One rank with every data-parallel replica's micro-batches, the whole model, no recompute.
  Config single = c;
  const int64_t dp = world.size() / (layout.tp * layout.pp);
  single.train.grad_accum = c.train.grad_accum * dp;
  single.train.run_dir = dir.str("reference");
  single.train.recompute = false;
  single.parallel = ParallelConfig{};
  Trainer reference(single, 0, self);
  for (int step = 1; step <= 5; ++step) {
    StepResult p = parallel.train_step();
    StepResult r = reference.train_step();
    INFO("step " << step);
    test::require_same_step(p, r);
    if (layout.pp > 1) {
      // Measured times are noisy (the expected bubble of each schedule is asserted exactly in
      // test_pipeline_bubble.cpp): every stage computed, and not all of the step was waiting.
      REQUIRE(p.stage_seconds.size() == static_cast<size_t>(layout.pp));
      for (double busy : p.stage_seconds) REQUIRE(busy > 0);
      REQUIRE(p.bubble < 1);
      // The ideal it is reported beside: the interleaved schedule's (p - 1) / (v m + p - 1).
      const double p_1 = static_cast<double>(layout.pp - 1);
      REQUIRE(parallel.ideal_bubble() ==
              Approx(p_1 / (static_cast<double>(layout.pp_virtual * c.train.grad_accum) + p_1)));
    }
  }
  // Evaluation runs the forward through the stages: the whole validation split, the same loss.
  EvalResult pe = parallel.evaluate(0), re = reference.evaluate(0);
  REQUIRE(pe.tokens == re.tokens);
  REQUIRE(pe.loss == Approx(re.loss).epsilon(1e-5));
  REQUIRE(pe.accuracy == Approx(re.accuracy).margin(1e-12));  // masked LM: over the whole vocabulary; else -1
  // The layout's weights, gathered into a checkpoint, are the reference's; and the layout loads
  // the reference's checkpoint and takes the same next step.
  parallel.save_checkpoint();
  reference.save_checkpoint();
  Trainer loaded(single, 0, self);
  loaded.load_checkpoint(shared + "/checkpoints/step_5", true);
  for (int g = 0; g < k_num_param_groups; ++g) {
    auto group = static_cast<ParamGroup>(g);
    // atol 1e-4 = 1% of the peak lr: Adam divides by sqrt(v), so an element whose gradient is
    // near zero turns the layouts' float reassociation into a visible share of an lr step.
    test::require_close(loaded.model().params().flat_master(group), reference.model().params().flat_master(group),
                        1e-4, 1e-4, "weights after 5 steps, loaded into one rank");
  }
  Trainer from_single(c, 0, world);
  from_single.load_checkpoint(single.train.run_dir + "/checkpoints/step_5", true);
  REQUIRE(from_single.step() == 5);
  REQUIRE(from_single.train_step().loss == Approx(reference.train_step().loss).epsilon(1e-5));
  world.barrier();
}

void run_layouts(const std::vector<Layout>& layouts) {
  auto world = make_world_communicator(Device::cpu());
  auto self = world->split(world->rank(), 0);
  const std::string shared =
      test::shared_run_dir("moe-mp-shared-" + std::to_string(world->size()));
  for (const Layout& layout : layouts) run_layout(*world, *self, layout, shared);
  if (world->rank() == 0) std::filesystem::remove_all(shared);
}

}  // namespace

TEST_CASE("tensor and pipeline parallel layouts train the one-rank model", "[parallel][train][tp][pp]") {
  auto world = make_world_communicator(Device::cpu());
  const int n = world->size();
  std::vector<Layout> layouts;
  if (n == 2) {
    layouts = {{.tp = 2},
               {.tp = 2, .recompute = true},
               {.tp = 2, .tied = false},
               {.pp = 2},
               {.pp = 2, .schedule = "gpipe"},
               {.pp = 2, .f64 = true},
               {.pp = 2, .recompute = true, .tied = false},
               {.tp = 2, .masked_lm = true},
               {.pp = 2, .masked_lm = true},
               {.pp = 2, .pp_virtual = 2},  // interleaved: chunks of layers 0, 2 and 1, 3
               {.pp = 2, .pp_virtual = 2, .recompute = true, .tied = false},
               // Sequence parallelism: norms and residuals on half the tokens each.
               {.tp = 2, .sp = true},
               {.tp = 2, .recompute = true, .tied = false, .sp = true},
               {.tp = 2, .masked_lm = true, .sp = true},
               {.tp = 2, .sp = true, .learned = true}};
  } else if (n == 4) {
    layouts = {{.tp = 4},
               {.tp = 2, .ep = 2},                    // TP 2 x DP 2 with EP 2
               {.pp = 4},
               {.pp = 4, .schedule = "gpipe", .recompute = true},
               {.pp = 2, .ep = 2, .zero = 1},         // PP 2 x DP 2 with EP 2
               {.tp = 2, .ep = 2, .zero = 3},         // ZeRO-3 gathers TP shards per unit
               {.pp = 2, .zero = 2, .schedule = "gpipe"},
               {.tp = 2, .pp = 2, .recompute = true},
               {.tp = 2, .ep = 2, .zero = 1, .masked_lm = true},
               {.pp = 4, .pp_virtual = 2, .layers = 8},   // interleaved over 8 virtual stages
               {.pp = 2, .ep = 2, .zero = 1, .pp_virtual = 2},
               // Sequence parallelism over 4 TP ranks, with DP 2 and EP 2 and ZeRO, and with stages.
               {.tp = 4, .sp = true},
               {.tp = 2, .ep = 2, .sp = true},
               {.tp = 2, .ep = 2, .zero = 3, .sp = true},
               {.tp = 2, .pp = 2, .recompute = true, .sp = true},
               {.tp = 2, .pp = 2, .pp_virtual = 2, .sp = true}};  // interleaved chunks pass [T/tp, d]
  } else if (n == 8) {
    layouts = {{.tp = 2, .pp = 2, .ep = 2, .zero = 1},   // PP 2 x TP 2 x DP 2 with EP 2 and ZeRO-1
               {.tp = 2, .pp = 2, .ep = 2, .zero = 3, .recompute = true},
               {.tp = 2, .pp = 2, .ep = 2, .zero = 1, .pp_virtual = 2},
               {.tp = 2, .pp = 2, .ep = 2, .zero = 1, .sp = true}};
  }
  REQUIRE(!layouts.empty());
  run_layouts(layouts);
}

// balance_scope = global_batch pools the Switch sums of every micro-batch and rank of a stage on the
// device (tensor-parallel slices, data-parallel replicas, stages in the GPipe order): each layout
// takes the steps of one rank running all the micro-batches (grad_accum x dp), recompute included.
TEST_CASE("global_batch balancing pools over stages, tensor slices and replicas as one rank",
          "[parallel][train][tp][pp]") {
  struct GlobalLayout {
    int64_t tp = 1, pp = 1, ep = 1;
    bool sp = false, recompute = false, drop = false;
    std::string aux_count = "kept";
  };
  auto world = make_world_communicator(Device::cpu());
  auto self = world->split(world->rank(), 0);
  std::vector<GlobalLayout> layouts;
  if (world->size() == 2) {
    layouts = {{.pp = 2},
               {.pp = 2, .recompute = true, .drop = true, .aux_count = "routed"},
               {.tp = 2},
               {.tp = 2, .sp = true, .recompute = true},
               {.drop = true}};  // DP 2, capacity dropping, kept slots
  } else if (world->size() == 4) {
    layouts = {{.tp = 4}, {.tp = 2, .ep = 2}, {.tp = 2, .ep = 2, .sp = true}, {.tp = 2, .pp = 2}};
  }
  const std::string shared = test::shared_run_dir("moe-mp-global-" + std::to_string(world->size()));
  for (const GlobalLayout& l : layouts) {
    INFO("tp " << l.tp << " pp " << l.pp << " ep " << l.ep << (l.sp ? " sequence_parallel" : "")
               << (l.recompute ? " recompute" : "") << (l.drop ? " capacity " + l.aux_count : ""));
    test::TempDir dir("moe-mp-global-rank" + std::to_string(world->rank()));
    Config c = test::model_parallel_config(dir);
    c.moe.balance_scope = "global_batch";
    c.moe.z_loss_coef = 0;
    c.moe.aux_loss_coef = 0.1;
    if (l.drop) c.moe.capacity_factor = 0.75;
    c.moe.aux_count = l.aux_count;
    if (l.tp == 4) c.model.num_kv_heads = 4;
    c.train.recompute = l.recompute;
    c.train.run_dir = shared;
    c.parallel.tp = l.tp;
    c.parallel.pp = l.pp;
    c.parallel.ep = l.ep;
    c.parallel.sequence_parallel = l.sp;
    c.parallel.pp_schedule = "gpipe";
    validate_config(c);
    if (world->rank() == 0) std::filesystem::remove_all(shared);
    world->barrier();
    Trainer parallel(c, 0, *world);
    Config single = c;
    single.train.grad_accum = c.train.grad_accum * (world->size() / (l.tp * l.pp));
    single.train.run_dir = dir.str("reference");
    single.parallel = ParallelConfig{};
    Trainer reference(single, 0, *self);
    for (int step = 1; step <= 3; ++step) {
      INFO("step " << step);
      test::require_same_step(parallel.train_step(), reference.train_step());
    }
    world->barrier();
  }
  if (world->rank() == 0) std::filesystem::remove_all(shared);
}
