// Tests of the TOML config: defaults, full files, --set overrides, the to_toml round trip, every
// class of bad input with its exact message, and that docs/config.md documents every key.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "src/config/config.h"
#include "src/util/check.h"

using Catch::Contains;
using Catch::StartsWith;

namespace {

moe::Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return moe::parse_config(text, "bad.toml", overrides);
}

moe::Config parse_set(const std::vector<std::string>& overrides) { return parse("", overrides); }

// Every key set to a valid non-default value (line numbers matter to the tests below).
const char* k_full_file = R"(# a full config
[model]
vocab_size = 1000
d_model = 96
num_layers = 6
num_heads = 6
num_kv_heads = 2
seq_len = 256
norm = "layernorm"
norm_eps = 1e-6
positions = "learned"
rope_theta = 500000
activation = "gelu"
d_ff = 384
tie_embeddings = false
init_std = 0.01

[moe]
num_experts = 16
top_k = 4
d_expert = 64
renormalize = false
activation = "geglu"
every = 2
first_dense = 1
aux_loss_coef = 0.001

[train]
steps = 2000
seed = 42
micro_batch_size = 4
grad_accum = 8
log_every = 5
eval_every = 0
eval_batches = 3
save_every = 500
run_dir = "runs/full"
resume = "latest"
device = "cpu"
dtype = "f64"

[optim]
lr = 0.001
min_lr = 0
beta1 = 0.85
beta2 = 0.99
eps = 1e-10
weight_decay = 0.05
decay_norms_and_biases = true
decay_embeddings = true
grad_clip = 0.5

[schedule]
kind = "step"
warmup_steps = 0
step_fractions = [0.5, 0.75, 0.9]
step_factor = 0.1
decay_fraction = 1

[data]
train_path = "data/train.tok"
val_path = "data/val.bin"
tokenizer = "data/sp.model"
)";

std::string source_dir() {
  const char* dir = std::getenv("MOE_SOURCE_DIR");  // set by CTest (tests/CMakeLists.txt)
  return dir ? dir : ".";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("an empty file gives the defaults, which validate") {
  moe::Config config = moe::parse_config("", "empty.toml");
  moe::Config defaults;
  CHECK(config.source_path == "empty.toml");
  defaults.source_path = "empty.toml";
  CHECK(config == defaults);
  CHECK(config.model.d_model == 128);
  CHECK(config.schedule.step_fractions == std::vector<double>{0.8, 0.9});
  CHECK_NOTHROW(moe::validate_config(moe::Config{}));
  // Empty sections and comments change nothing.
  CHECK(moe::parse_config("# hi\n[model]\n[moe]\n[data]\n", "empty.toml") == defaults);
}

TEST_CASE("a full file sets every field") {
  moe::Config c = moe::parse_config(k_full_file, "full.toml");
  CHECK(c.model.vocab_size == 1000);
  CHECK(c.model.d_model == 96);
  CHECK(c.model.num_layers == 6);
  CHECK(c.model.num_heads == 6);
  CHECK(c.model.num_kv_heads == 2);
  CHECK(c.model.seq_len == 256);
  CHECK(c.model.norm == "layernorm");
  CHECK(c.model.norm_eps == 1e-6);
  CHECK(c.model.positions == "learned");
  CHECK(c.model.rope_theta == 500000.0);  // an integer where a float is expected
  CHECK(c.model.activation == "gelu");
  CHECK(c.model.d_ff == 384);
  CHECK(c.model.tie_embeddings == false);
  CHECK(c.model.init_std == 0.01);
  CHECK(c.moe.num_experts == 16);
  CHECK(c.moe.top_k == 4);
  CHECK(c.moe.d_expert == 64);
  CHECK(c.moe.renormalize == false);
  CHECK(c.moe.activation == "geglu");
  CHECK(c.moe.every == 2);
  CHECK(c.moe.first_dense == 1);
  CHECK(c.moe.aux_loss_coef == 0.001);
  CHECK(c.train.steps == 2000);
  CHECK(c.train.seed == 42u);
  CHECK(c.train.micro_batch_size == 4);
  CHECK(c.train.grad_accum == 8);
  CHECK(c.train.log_every == 5);
  CHECK(c.train.eval_every == 0);
  CHECK(c.train.eval_batches == 3);
  CHECK(c.train.save_every == 500);
  CHECK(c.train.run_dir == "runs/full");
  CHECK(c.train.resume == "latest");
  CHECK(c.train.device == "cpu");
  CHECK(c.train.dtype == "f64");
  CHECK(c.optim.lr == 0.001);
  CHECK(c.optim.min_lr == 0.0);
  CHECK(c.optim.beta1 == 0.85);
  CHECK(c.optim.beta2 == 0.99);
  CHECK(c.optim.eps == 1e-10);
  CHECK(c.optim.weight_decay == 0.05);
  CHECK(c.optim.decay_norms_and_biases == true);
  CHECK(c.optim.decay_embeddings == true);
  CHECK(c.optim.grad_clip == 0.5);
  CHECK(c.schedule.kind == "step");
  CHECK(c.schedule.warmup_steps == 0);
  CHECK(c.schedule.step_fractions == std::vector<double>{0.5, 0.75, 0.9});
  CHECK(c.schedule.step_factor == 0.1);
  CHECK(c.schedule.decay_fraction == 1.0);
  CHECK(c.data.train_path == "data/train.tok");
  CHECK(c.data.val_path == "data/val.bin");
  CHECK(c.data.tokenizer == "data/sp.model");
}

TEST_CASE("dotted keys and inline tables are the same keys") {
  moe::Config c = parse("model.d_model = 64\nmoe = { num_experts = 4, top_k = 1 }\n");
  CHECK(c.model.d_model == 64);
  CHECK(c.moe.num_experts == 4);
  CHECK(c.moe.top_k == 1);
}

TEST_CASE("load_config reads a file and names it in errors") {
  auto dir = std::filesystem::temp_directory_path() / ("moe_test_config_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "run.toml").string();
  std::ofstream(path) << "[train]\nsteps = 7\n\n[moe]\nnum_experts = 2\ntop_k = 3\n";
  REQUIRE_THROWS_WITH(moe::load_config(path),
                      StartsWith(path + ":6: moe.top_k = 3 is larger than moe.num_experts = 2"));
  moe::Config c = moe::load_config(path, {"moe.top_k=2"});
  CHECK(c.source_path == path);
  CHECK(c.train.steps == 7);
  CHECK(c.moe.top_k == 2);
  std::string missing = (dir / "missing.toml").string();
  REQUIRE_THROWS_WITH(moe::load_config(missing), StartsWith(missing + ": cannot read config file (no such file)"));
  REQUIRE_THROWS_WITH(moe::load_config(dir.string()), Contains("not a regular file"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("--set overrides: TOML values, bare strings, later wins over earlier and the file") {
  moe::Config c = moe::parse_config("[model]\nd_model = 64\n[train]\ndevice = \"cuda\"\n", "f.toml",
                                    {"model.d_model=256", "optim.lr=1", "optim.min_lr = 0.5",
                                     "model.tie_embeddings=false", "train.device=cpu",
                                     "train.run_dir=\"runs/a b\"", "data.train_path=2024",
                                     "train.resume=", "schedule.step_fractions=[0.25, 0.5]",
                                     "moe.num_experts=8", "moe.num_experts=4", "train.seed=99"});
  CHECK(c.model.d_model == 256);
  CHECK(c.optim.lr == 1.0);
  CHECK(c.optim.min_lr == 0.5);
  CHECK(c.model.tie_embeddings == false);
  CHECK(c.train.device == "cpu");
  CHECK(c.train.run_dir == "runs/a b");
  CHECK(c.data.train_path == "2024");  // a string key takes the text even when it reads as a number
  CHECK(c.train.resume.empty());
  CHECK(c.schedule.step_fractions == std::vector<double>{0.25, 0.5});
  CHECK(c.moe.num_experts == 4);
  CHECK(c.train.seed == 99u);
}

TEST_CASE("to_toml round trips through parse_config exactly") {
  moe::Config c = moe::parse_config(k_full_file, "full.toml");
  c.optim.lr = 0.1 + 0.2;  // needs all 17 digits
  c.optim.min_lr = 1e-300;
  c.model.init_std = 1.0 / 3.0;
  c.model.rope_theta = 1e20;
  c.schedule.step_fractions = {1.0 / 7.0, 2.0 / 3.0};
  c.train.seed = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  c.train.run_dir = "runs/\"quoted\" back\\slash\ttab\nnewline é \x01";
  c.train.resume = "";
  c.train.recompute = true;
  c.parallel.pp = 3;
  c.parallel.pp_layers = {1, 3, 2};
  c.parallel.pp_schedule = "gpipe";
  std::string text = moe::to_toml(c);
  INFO(text);
  CHECK(moe::parse_config(text, "full.toml") == c);
  moe::Config defaults;
  defaults.source_path = "x.toml";
  CHECK(moe::parse_config(moe::to_toml(defaults), "x.toml") == defaults);
  // Every key is written, so a change of default does not change a resolved run.
  CHECK_THAT(text, Contains("\n[model]\nvocab_size = 1000\n"));
  CHECK_THAT(text, Contains("rope_theta = 1e+20\n"));
  CHECK_THAT(text, Contains("decay_fraction = 1.0\n"));
  CHECK_THAT(text, Contains("resume = \"\"\n"));
  CHECK_THAT(text, Contains("[data]\ntrain_path = \"data/train.tok\"\nval_path"));
  CHECK_THAT(text, Contains("recompute = true\n"));
  CHECK_THAT(text, Contains("pp = 3\npp_layers = [1, 3, 2]\npp_schedule = \"gpipe\"\n"));
  CHECK_THAT(moe::to_toml(defaults), Contains("pp_layers = []\npp_schedule = \"1f1b\"\n"));
  CHECK_THAT(moe::to_toml(defaults), Contains("pp_schedule = \"1f1b\"\npp_virtual = 1\n"));
}

TEST_CASE("pipeline, tensor-parallel and recompute keys: defaults, file, overrides") {
  moe::Config d;
  CHECK(d.parallel.pp_layers.empty());
  CHECK(d.parallel.pp_schedule == "1f1b");
  CHECK(d.train.recompute == false);
  moe::Config c = parse("[model]\nnum_layers = 6\n[train]\nrecompute = true\n"
                        "[parallel]\npp = 3\npp_layers = [1, 3, 2]\npp_schedule = \"gpipe\"\n");
  CHECK(c.parallel.pp_layers == std::vector<int64_t>{1, 3, 2});
  CHECK(c.parallel.pp_schedule == "gpipe");
  CHECK(c.train.recompute == true);
  c = parse("[model]\nnum_layers = 6\n[parallel]\npp = 3\npp_layers = [1, 3, 2]\n",
            {"parallel.pp=2", "parallel.pp_layers=[4, 2]", "parallel.pp_schedule=gpipe", "train.recompute=true"});
  CHECK(c.parallel.pp == 2);
  CHECK(c.parallel.pp_layers == std::vector<int64_t>{4, 2});
  CHECK(c.parallel.pp_schedule == "gpipe");
  CHECK(c.train.recompute == true);
  CHECK(parse_set({"parallel.pp=2", "parallel.pp_layers=[2, 4]", "parallel.pp_layers=[]", "model.num_layers=6"})
            .parallel.pp_layers.empty());
  // A TP model whose splits all divide: heads, widths, vocabulary, tokens.
  CHECK_NOTHROW(parse_set({"parallel.tp=2", "moe.num_experts=4", "moe.num_shared_experts=1",
                           "moe.seq_aux_loss_coef=0.001", "moe.z_loss_coef=0.001"}));
  // The MoE-only rules do not apply to a dense model.
  CHECK_NOTHROW(parse_set({"parallel.tp=2", "moe.importance_loss_coef=0.1", "train.micro_batch_size=1",
                           "model.seq_len=3"}));
  CHECK_NOTHROW(parse_set({"parallel.pp=2", "moe.balance_scope=global_batch"}));  // dense: no balancing
  CHECK_NOTHROW(parse_set({"parallel.pp=2", "moe.num_experts=4", "moe.balance_scope=global_batch",
                           "parallel.pp_schedule=gpipe"}));
}

TEST_CASE("pp_layers type errors name the key") {
  REQUIRE_THROWS_WITH(parse("[parallel]\npp = 2\npp_layers = [1, 1.5]\n"),
                      StartsWith("bad.toml:3: parallel.pp_layers: expected an array of integers, "
                                 "got an array containing float 1.5"));
  REQUIRE_THROWS_WITH(parse("[parallel]\npp_layers = 2\n"),
                      StartsWith("bad.toml:2: parallel.pp_layers: expected an array of integers, got integer 2"));
  REQUIRE_THROWS_WITH(parse_set({"parallel.pp_layers=[\"a\"]"}),
                      StartsWith("--set parallel.pp_layers=[\"a\"]: parallel.pp_layers: expected an array of "
                                 "integers, got an array containing string"));
  REQUIRE_THROWS_WITH(parse_set({"parallel.pp_layers=2"}),
                      StartsWith("--set parallel.pp_layers=2: parallel.pp_layers: expected an array of integers"));
}

TEST_CASE("pipeline and tensor-parallel rules have their messages") {
  struct Case {
    std::vector<std::string> sets;
    std::string message;  // after "--set <last set>: " (the last set is the key blamed)
  };
  const std::vector<Case> cases = {
      {{"parallel.pp=3"}, "parallel.pp = 3 is more than model.num_layers = 2 (every pipeline stage needs at least "
                          "one layer)"},
      {{"parallel.pp=2", "parallel.pp_layers=[2]"}, "parallel.pp_layers has 1 entries but parallel.pp = 2"},
      {{"model.num_layers=4", "parallel.pp=2", "parallel.pp_layers=[4, 0]"},
       "parallel.pp_layers[1] = 0 must be at least 1"},
      {{"model.num_layers=4", "parallel.pp=2", "parallel.pp_layers=[2, 3]"},
       "parallel.pp_layers sums to 5 layers but model.num_layers = 4"},
      {{"model.num_layers=4", "parallel.pp=2", "parallel.pp_layers=[9223372036854775807, 9223372036854775807]"},
       "parallel.pp_layers sums to 9223372036854775807 layers but model.num_layers = 4"},
      {{"parallel.pp_schedule=interleaved"}, "parallel.pp_schedule = 'interleaved' is not one of: 1f1b, gpipe"},
      {{"parallel.pp_virtual=0"}, "parallel.pp_virtual = 0 must be at least 1"},
      {{"parallel.a2a_overlap=true"}, "parallel.a2a_overlap = true needs parallel.ep > 1, got parallel.ep = 1"},
      {{"parallel.a2a_overlap=1"}, "parallel.a2a_overlap: expected a boolean"},
      {{"parallel.pp_virtual=2"}, "parallel.pp_virtual = 2 needs parallel.pp > 1 (virtual stages interleave the "
                                  "chunks of several pipeline stages)"},
      {{"model.num_layers=4", "train.grad_accum=2", "parallel.pp=2", "parallel.pp_schedule=gpipe",
        "parallel.pp_virtual=2"},
       "parallel.pp_virtual = 2 (interleaved 1F1B) needs parallel.pp_schedule = \"1f1b\", not \"gpipe\""},
      {{"model.num_layers=4", "parallel.pp=2", "train.grad_accum=3", "parallel.pp_virtual=2"},
       "parallel.pp_virtual = 2 needs train.grad_accum (3) to be a multiple of parallel.pp (2)"},
      {{"train.grad_accum=2", "parallel.pp=2", "parallel.pp_virtual=2"},
       "parallel.pp = 2 x parallel.pp_virtual = 2 virtual stages is more than model.num_layers = 2 (every virtual "
       "stage needs at least one layer)"},
      {{"model.num_layers=4", "train.grad_accum=2", "parallel.pp=2", "parallel.pp_virtual=2",
        "parallel.pp_layers=[2, 2]"},
       "parallel.pp_layers has 2 entries but parallel.pp = 2 x parallel.pp_virtual = 2 (one layer count per virtual "
       "pipeline stage)"},
      {{"moe.num_experts=4", "moe.balance_scope=global_batch", "parallel.pp=2"},
       "parallel.pp = 2 with moe.balance_scope = \"global_batch\" needs parallel.pp_schedule = \"gpipe\""},
      {{"moe.num_experts=4", "moe.aux_loss_coef=0", "moe.balance_scope=global_batch"},
       "moe.balance_scope = \"global_batch\" pools the Switch loss over the global batch, but moe.aux_loss_coef = 0 "
       "turns it off"},
      {{"parallel.tp=2", "model.vocab_size=511"}, "model.vocab_size = 511 is not divisible by parallel.tp = 2"},
      {{"parallel.tp=2", "model.num_heads=2", "model.num_kv_heads=1"},
       "model.num_kv_heads = 1 is not divisible by parallel.tp = 2"},
      {{"parallel.tp=8"}, "model.num_heads = 4 is not divisible by parallel.tp = 8"},
      {{"parallel.tp=2", "model.d_ff=511"}, "model.d_ff = 511 is not divisible by parallel.tp = 2"},
      {{"moe.num_experts=4", "moe.d_shared=3", "parallel.tp=2", "moe.num_shared_experts=1"},
       "the shared experts' width moe.num_shared_experts * moe.d_shared = 1 * 3 = 3 is not divisible by "
       "parallel.tp = 2"},
      {{"moe.num_experts=4", "moe.d_expert=6", "moe.granularity=2", "parallel.tp=2", "moe.num_shared_experts=1"},
       "the shared experts' width moe.num_shared_experts * (moe.d_expert / moe.granularity) = 1 * 3 = 3 is not "
       "divisible by parallel.tp = 2"},
      {{"parallel.sequence_parallel=true"},
       "parallel.sequence_parallel = true needs parallel.tp > 1 (it shards the tensor-parallel group's replicated "
       "activations along the sequence), but parallel.tp = 1"},
      {{"model.seq_len=3", "parallel.tp=2", "train.micro_batch_size=1", "parallel.sequence_parallel=true"},
       "parallel.sequence_parallel = true needs train.micro_batch_size * model.seq_len = 1 * 3 = 3 tokens divisible "
       "by parallel.tp = 2 (each tensor-parallel rank holds an equal share of the micro-batch's tokens)"},
      {{"moe.num_experts=4", "model.seq_len=3", "parallel.tp=2", "train.micro_batch_size=1"},
       "train.micro_batch_size * model.seq_len = 1 * 3 = 3 tokens is not divisible by parallel.tp = 2"},
      {{"moe.num_experts=4", "parallel.tp=2", "moe.importance_loss_coef=0.1"},
       "moe.importance_loss_coef = 0.1 must be 0 with parallel.tp = 2: each tensor-parallel rank routes a slice of "
       "the tokens, and this loss is not a sum over tokens (use moe.aux_loss_coef, moe.z_loss_coef or "
       "moe.seq_aux_loss_coef)"},
      {{"moe.num_experts=4", "moe.router=noisy_topk", "parallel.tp=2", "moe.load_loss_coef=0.1"},
       "moe.load_loss_coef = 0.1 must be 0 with parallel.tp = 2"},
      {{"moe.num_experts=4", "moe.device_groups=2", "parallel.tp=2", "moe.device_loss_coef=0.1"},
       "moe.device_loss_coef = 0.1 must be 0 with parallel.tp = 2"},
      {{"moe.num_experts=4", "train.micro_batch_size=3", "parallel.tp=2", "moe.seq_aux_loss_coef=0.01"},
       "moe.seq_aux_loss_coef needs train.micro_batch_size = 3 divisible by parallel.tp = 2 (each tensor-parallel "
       "rank's slice of tokens must be whole sequences)"},
  };
  for (const auto& c : cases) {
    INFO(c.sets.back());
    REQUIRE_THROWS_WITH(parse_set(c.sets), StartsWith("--set " + c.sets.back() + ": " + c.message));
  }
  // The error names the file line of the key that broke the rule.
  REQUIRE_THROWS_WITH(parse("[model]\nnum_layers = 4\n[parallel]\npp = 2\npp_layers = [1, 2]\n"),
                      StartsWith("bad.toml:5: parallel.pp_layers sums to 3 layers but model.num_layers = 4"));
  REQUIRE_THROWS_WITH(parse("[moe]\nnum_experts = 4\nbalance_scope = \"global_batch\"\n[parallel]\npp = 2\n"),
                      StartsWith("bad.toml:5: parallel.pp = 2 with moe.balance_scope") &&
                          Contains("1F1B runs backwards before the last forwards"));
  REQUIRE_THROWS_WITH(parse("[model]\nvocab_size = 1001\n[parallel]\ntp = 2\n"),
                      StartsWith("bad.toml:2: model.vocab_size = 1001 is not divisible by parallel.tp = 2"));
}

TEST_CASE("unknown keys and sections name the file line") {
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = 64\nd_modle = 64\n"),
                      StartsWith("bad.toml:3: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"));
  REQUIRE_THROWS_WITH(parse("\n[moe]\nlr = 0.1\n"),
                      StartsWith("bad.toml:3: unknown key 'moe.lr' (did you mean 'optim.lr'?)"));
  REQUIRE_THROWS_WITH(parse("[model]\nwhatever = 1\n"),
                      StartsWith("bad.toml:2: unknown key 'model.whatever'") && !Contains("did you mean"));
  REQUIRE_THROWS_WITH(parse("[train]\nsteps = 1\n\n[modle]\nd_model = 1\n"),
                      StartsWith("bad.toml:4: unknown section [modle] (sections: model, objective, moe, train, optim, "
                                 "schedule, data, parallel)"));
  REQUIRE_THROWS_WITH(parse("seed = 3\n"),
                      StartsWith("bad.toml:1: unknown key 'seed' outside any section (did you mean 'train.seed'?)"));
  REQUIRE_THROWS_WITH(parse("[model.extra]\nx = 1\n"), StartsWith("bad.toml:1: unknown key 'model.extra'"));
  // The first mistake in the file is reported, whatever the key order.
  REQUIRE_THROWS_WITH(parse("[train]\nsteps = 1\nzzz = 1\naaa = 2\n"),
                      StartsWith("bad.toml:3: unknown key 'train.zzz'"));
  REQUIRE_THROWS_WITH(parse("[zeta]\n[alpha]\n"), StartsWith("bad.toml:1: unknown section [zeta]"));
  REQUIRE_THROWS_WITH(parse("model = 3\n"), StartsWith("bad.toml:1: model: expected a table [model], got integer"));
}

TEST_CASE("wrong value types name the key, the expected and the found type") {
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = \"64\"\n"),
                      StartsWith("bad.toml:2: model.d_model: expected an integer, got string '64'"));
  REQUIRE_THROWS_WITH(parse("[model]\n\nnum_layers = 2.5\n"),
                      StartsWith("bad.toml:3: model.num_layers: expected an integer, got float 2.5"));
  REQUIRE_THROWS_WITH(parse("[optim]\nlr = \"fast\"\n"), Contains("optim.lr: expected a number, got string"));
  REQUIRE_THROWS_WITH(parse("[model]\ntie_embeddings = 1\n"),
                      Contains("bad.toml:2: model.tie_embeddings: expected a boolean, got integer 1"));
  REQUIRE_THROWS_WITH(parse("[model]\nnorm = 1\n"), Contains("model.norm: expected a string, got integer"));
  REQUIRE_THROWS_WITH(parse("[schedule]\nstep_fractions = 0.5\n"),
                      Contains("schedule.step_fractions: expected an array of numbers, got float"));
  REQUIRE_THROWS_WITH(parse("[schedule]\nstep_fractions = [0.5, \"x\"]\n"),
                      Contains("schedule.step_fractions: expected an array of numbers, "
                               "got an array containing string"));
  REQUIRE_THROWS_WITH(parse("[train]\nseed = -1\n"),
                      Contains("bad.toml:2: train.seed: expected a non-negative integer, got integer -1"));
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = { a = 1 }\n"),
                      Contains("model.d_model: expected an integer, got table"));
}

TEST_CASE("TOML syntax errors give the file and line") {
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = = 3\n"), StartsWith("bad.toml:2: TOML syntax error"));
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = 3\n\nd_model = 4\n"), StartsWith("bad.toml:4: TOML syntax error"));
  REQUIRE_THROWS_WITH(parse("[train]\nrun_dir = \"unterminated\n"), StartsWith("bad.toml:2: TOML syntax error"));
  REQUIRE_THROWS_WITH(parse("[model\n"), StartsWith("bad.toml:1: TOML syntax error"));
}

TEST_CASE("bad overrides name the override") {
  REQUIRE_THROWS_WITH(parse_set({"model.d_model"}), StartsWith("--set model.d_model: expected section.key=value"));
  REQUIRE_THROWS_WITH(parse_set({"d_model=3"}), StartsWith("--set d_model=3: expected section.key=value"));
  REQUIRE_THROWS_WITH(parse_set({"model.=3"}), StartsWith("--set model.=3: expected section.key=value"));
  REQUIRE_THROWS_WITH(parse_set({"model.d_modle=3"}),
                      StartsWith("--set model.d_modle=3: unknown key 'model.d_modle' (did you mean 'model.d_model'?)"));
  REQUIRE_THROWS_WITH(parse_set({"modle.d_model=3"}), StartsWith("--set modle.d_model=3: unknown section [modle]"));
  REQUIRE_THROWS_WITH(parse_set({"model.d_model=abc"}),
                      StartsWith("--set model.d_model=abc: model.d_model: expected an integer, got 'abc'"));
  REQUIRE_THROWS_WITH(parse_set({"model.d_model=1.5"}),
                      StartsWith("--set model.d_model=1.5: model.d_model: expected an integer, got float 1.5"));
  REQUIRE_THROWS_WITH(parse_set({"optim.lr=\"0.1\""}),
                      StartsWith("--set optim.lr=\"0.1\": optim.lr: expected a number, got string"));
  REQUIRE_THROWS_WITH(parse_set({"moe.renormalize=yes"}),
                      StartsWith("--set moe.renormalize=yes: moe.renormalize: expected a boolean, got 'yes'"));
  REQUIRE_THROWS_WITH(parse_set({"schedule.step_fractions=0.5"}),
                      StartsWith("--set schedule.step_fractions=0.5: schedule.step_fractions: expected an array"));
}

TEST_CASE("impossible combinations name the keys and where they were set") {
  REQUIRE_THROWS_WITH(parse("[moe]\nnum_experts = 8\ntop_k = 9\n"),
                      StartsWith("bad.toml:3: moe.top_k = 9 is larger than moe.num_experts = 8"));
  REQUIRE_THROWS_WITH(parse("[moe]\nnum_experts = 8\n", {"moe.top_k=9"}),
                      StartsWith("--set moe.top_k=9: moe.top_k = 9 is larger than moe.num_experts = 8"));
  REQUIRE_THROWS_WITH(parse("[moe]\nnum_experts = 1\n"),  // top_k = 2 by default: blame num_experts' line
                      StartsWith("bad.toml:2: moe.top_k = 2 is larger than moe.num_experts = 1"));
  REQUIRE_THROWS_WITH(parse("[model]\nd_model = 100\nnum_heads = 3\nnum_kv_heads = 1\n"),
                      StartsWith("bad.toml:3: model.d_model = 100 is not divisible by model.num_heads = 3"));
  CHECK_NOTHROW(parse("[moe]\nnum_experts = 0\ntop_k = 9\n"));  // a dense model ignores top_k
}

TEST_CASE("validate_config on a config built in code") {
  moe::Config c;
  c.moe.num_experts = 8;
  c.moe.top_k = 9;
  REQUIRE_THROWS_WITH(moe::validate_config(c), StartsWith("moe.top_k = 9 is larger than moe.num_experts = 8"));
  c.source_path = "from.toml";
  REQUIRE_THROWS_WITH(moe::validate_config(c), StartsWith("from.toml: moe.top_k = 9 is larger than"));
  c.moe.top_k = 8;
  CHECK_NOTHROW(moe::validate_config(c));
  c.train.seed = std::numeric_limits<uint64_t>::max();
  REQUIRE_THROWS_WITH(moe::validate_config(c), Contains("train.seed = 18446744073709551615 must be below 2^63"));
}

TEST_CASE("every range rule has its message") {
  struct Case {
    std::string set, message;
  };
  const std::vector<Case> cases = {
      {"model.vocab_size=0", "model.vocab_size = 0 must be positive"},
      {"model.vocab_size=3000000000", "model.vocab_size = 3000000000 does not fit 32-bit token ids"},
      {"model.d_model=-8", "model.d_model = -8 must be positive"},
      {"model.num_layers=0", "model.num_layers = 0 must be positive"},
      {"model.num_heads=0", "model.num_heads = 0 must be positive"},
      {"model.num_kv_heads=0", "model.num_kv_heads = 0 must be positive"},
      {"model.seq_len=0", "model.seq_len = 0 must be positive"},
      {"model.d_ff=0", "model.d_ff = 0 must be positive"},
      {"model.num_kv_heads=3", "model.num_heads = 4 is not divisible by model.num_kv_heads = 3"},
      {"model.norm=batchnorm", "model.norm = 'batchnorm' is not one of: rmsnorm, layernorm"},
      {"model.positions=alibi", "model.positions = 'alibi' is not one of: rope, learned"},
      {"model.activation=", "model.activation = '' is not one of: relu, gelu, geglu, swiglu"},
      {"model.norm_eps=0", "model.norm_eps = 0 must be positive"},
      {"model.rope_theta=-1", "model.rope_theta = -1 must be positive"},
      {"model.init_std=0", "model.init_std = 0 must be positive"},
      {"model.objective=prefix_lm",
       "model.objective = 'prefix_lm' is not one of: causal_lm, masked_lm, span_corruption"},
      {"objective.mask_rate=0", "objective.mask_rate = 0 must be in (0, 1)"},
      {"objective.mask_rate=1", "objective.mask_rate = 1 must be in (0, 1)"},
      {"objective.mask_token_rate=1.5", "objective.mask_token_rate = 1.5 must be in [0, 1]"},
      {"objective.random_token_rate=-0.1", "objective.random_token_rate = -0.1 must be in [0, 1]"},
      {"moe.num_experts=-1", "moe.num_experts = -1 must be at least 0"},
      {"moe.d_expert=0", "moe.d_expert = 0 must be positive"},
      {"moe.activation=tanh", "moe.activation = 'tanh' is not one of: \"\", relu, gelu, geglu, swiglu"},
      {"moe.every=0", "moe.every = 0 must be at least 1"},
      {"moe.first_dense=3", "moe.first_dense = 3 is outside [0, model.num_layers = 2]"},
      {"moe.first_dense=-1", "moe.first_dense = -1 is outside [0, model.num_layers = 2]"},
      {"moe.aux_loss_coef=-0.1", "moe.aux_loss_coef = -0.1 must not be negative"},
      {"moe.aux_count=dropped", "moe.aux_count = 'dropped' is not one of: routed, kept"},
      {"train.steps=0", "train.steps = 0 must be at least 1"},
      {"train.micro_batch_size=0", "train.micro_batch_size = 0 must be at least 1"},
      {"train.grad_accum=0", "train.grad_accum = 0 must be at least 1"},
      {"train.log_every=0", "train.log_every = 0 must be at least 1"},
      {"train.eval_every=-1", "train.eval_every = -1 must be at least 0"},
      {"train.eval_batches=0", "train.eval_batches = 0 must be at least 1"},
      {"train.save_every=-5", "train.save_every = -5 must be at least 0"},
      {"train.keep_last=-1", "train.keep_last = -1 must be at least 0"},
      {"train.run_dir=", "train.run_dir must not be empty"},
      {"train.device=gpu", "train.device = 'gpu' is not one of: auto, cpu, cuda"},
      {"train.dtype=fp16", "train.dtype = 'fp16' is not one of: \"\", f32, f64, bf16"},
      {"train.nonfinite=ignore", "train.nonfinite = 'ignore' is not one of: stop, skip_step"},
      {"train.max_skipped_steps=0", "train.max_skipped_steps = 0 must be at least 1"},
      {"train.loss_spike_factor=1", "train.loss_spike_factor = 1 must be 0 (off) or above 1"},
      {"train.loss_spike_factor=-2", "train.loss_spike_factor = -2 must be 0 (off) or above 1"},
      {"train.peak_tflops=-1", "train.peak_tflops = -1 must be 0 (the datasheet peak of the device) or positive"},
      {"train.loss_spike_factor=nan", "train.loss_spike_factor = nan must be a finite number"},
      {"optim.lr=0", "optim.lr = 0 must be positive"},
      {"optim.lr=nan", "optim.lr = nan must be a finite number"},
      {"optim.eps=inf", "optim.eps = inf must be a finite number"},
      {"optim.min_lr=-1e-4", "optim.min_lr = -0.0001 must not be negative"},
      {"optim.min_lr=0.01", "optim.min_lr = 0.01 is larger than optim.lr = 0.003"},
      {"optim.beta1=1", "optim.beta1 = 1 must be in [0, 1)"},
      {"optim.beta2=-0.5", "optim.beta2 = -0.5 must be in [0, 1)"},
      {"optim.eps=0", "optim.eps = 0 must be positive"},
      {"optim.weight_decay=-1", "optim.weight_decay = -1 must not be negative"},
      {"optim.grad_clip=-1", "optim.grad_clip = -1 must not be negative"},
      {"schedule.kind=exp", "schedule.kind = 'exp' is not one of: cosine, linear, constant, step, wsd"},
      {"schedule.warmup_steps=-1", "schedule.warmup_steps = -1 must be at least 0"},
      {"schedule.step_fractions=[0.5, 0.5]",
       "schedule.step_fractions[1] = 0.5 must be larger than the one before (0.5)"},
      {"schedule.step_fractions=[0.9, 0.1]", "schedule.step_fractions[1] = 0.1 must be larger than the one before"},
      {"schedule.step_fractions=[0.5, 1]", "schedule.step_fractions[1] = 1 must be in (0, 1)"},
      {"schedule.step_fractions=[0]", "schedule.step_fractions[0] = 0 must be in (0, 1)"},
      {"schedule.step_fractions=[nan]", "schedule.step_fractions contains nan, not a finite number"},
      {"schedule.step_factor=0", "schedule.step_factor = 0 must be in (0, 1]"},
      {"schedule.step_factor=2", "schedule.step_factor = 2 must be in (0, 1]"},
      {"schedule.decay_fraction=0", "schedule.decay_fraction = 0 must be in (0, 1]"},
      {"schedule.decay_fraction=1.5", "schedule.decay_fraction = 1.5 must be in (0, 1]"},
  };
  for (const auto& c : cases) {
    INFO(c.set);
    REQUIRE_THROWS_WITH(parse_set({c.set}), StartsWith("--set " + c.set + ": " + c.message));
  }
  REQUIRE_THROWS_WITH(parse_set({"model.d_model=96", "model.num_heads=32", "model.num_kv_heads=32"}),
                      StartsWith("--set model.num_heads=32: model.positions = 'rope' needs an even head "
                                 "dimension, but model.d_model / model.num_heads = 96 / 32 = 3"));
  CHECK_NOTHROW(parse_set({"model.d_model=96", "model.num_heads=32", "model.num_kv_heads=32",
                           "model.positions=learned"}));
  REQUIRE_THROWS_WITH(parse_set({"schedule.kind=step", "schedule.step_fractions=[]"}),
                      StartsWith("--set schedule.step_fractions=[]: schedule.kind = 'step' needs at least one entry"));
  CHECK_NOTHROW(parse_set({"schedule.kind=cosine", "schedule.step_fractions=[]"}));
  REQUIRE_THROWS_WITH(parse_set({"train.device=cuda", "train.dtype=f64"}),
                      StartsWith("--set train.dtype=f64: train.dtype = 'f64' is CPU only, but train.device = 'cuda'"));
  CHECK_NOTHROW(parse_set({"model.objective=causal_lm"}));
  // masked_lm: its rates add up, [MASK] comes from a tokenizer, and what it cannot combine with.
  REQUIRE_THROWS_WITH(parse_set({"objective.mask_token_rate=0.9", "objective.random_token_rate=0.2"}),
                      Contains("objective.mask_token_rate + objective.random_token_rate = 1.1 must be at most 1"));
  REQUIRE_THROWS_WITH(parse_set({"model.objective=masked_lm"}),
                      Contains("model.objective = 'masked_lm' finds [MASK] by name in the tokenizer: set "
                               "data.tokenizer to a SentencePiece model made by `moe tokenize --special-tokens`"));
  REQUIRE_THROWS_WITH(parse_set({"data.tokenizer=t.model", "model.reset_attention=true", "model.objective=masked_lm"}),
                      Contains("model.reset_attention keeps attention inside documents of a causal model, but "
                               "model.objective = 'masked_lm' attends both ways"));
  REQUIRE_THROWS_WITH(parse_set({"data.tokenizer=t.model", "moe.num_experts=4", "moe.router=hash",
                                 "moe.hash_kind=oracle", "moe.hash_allow_oracle=true", "model.objective=masked_lm"}),
                      Contains("moe.hash_kind = \"oracle\" routes on the next token, which model.objective = "
                               "'masked_lm' does not predict"));
  const moe::Config mlm = parse_set({"data.tokenizer=t.model", "model.objective=masked_lm",
                                     "objective.mask_rate=0.2", "objective.mask_token_rate=1",
                                     "objective.random_token_rate=0"});
  CHECK(mlm.objective.mask_rate == 0.2);
  CHECK(mlm.objective.mask_token_rate == 1.0);
  // Next-sentence prediction: masked LM only, room for [CLS] A [SEP] B [SEP], no TP or PP.
  REQUIRE_THROWS_WITH(parse_set({"objective.nsp=true"}),
                      Contains("objective.nsp = true (next-sentence prediction) needs model.objective = 'masked_lm', "
                               "not 'causal_lm'"));
  REQUIRE_THROWS_WITH(parse_set({"data.tokenizer=t.model", "model.objective=masked_lm", "objective.nsp=true",
                                 "model.seq_len=4"}),
                      Contains("objective.nsp = true lays out [CLS] A [SEP] B [SEP]: model.seq_len = 4 must be at "
                               "least 5"));
  for (const char* layout : {"parallel.tp=2", "parallel.pp=2"}) {
    REQUIRE_THROWS_WITH(parse_set({"data.tokenizer=t.model", "model.objective=masked_lm", "objective.nsp=true", layout}),
                        Contains("objective.nsp = true is not built for tensor or pipeline parallelism"));
  }
  CHECK(parse_set({"data.tokenizer=t.model", "model.objective=masked_lm", "objective.nsp=true"}).objective.nsp);
  CHECK_NOTHROW(parse_set({"moe.activation=", "train.dtype=bf16", "train.resume=runs/x/step_100",
                           "moe.first_dense=2", "moe.num_experts=4", "moe.top_k=4", "optim.min_lr=0.003"}));
}

TEST_CASE("run-directory keys and config_changes (what a resume compares)") {
  moe::Config d;
  CHECK(d.train.overwrite == false);
  CHECK(d.train.keep_last == 0);
  moe::Config c = parse_set({"train.overwrite=true", "train.keep_last=3"});
  CHECK(c.train.overwrite);
  CHECK(c.train.keep_last == 3);
  CHECK(moe::config_changes(c, c).empty());
  moe::Config other = c;
  other.source_path = "elsewhere.toml";  // not a key
  other.model.rope_theta = 5e5;
  other.moe.layer_routers = {"hash"};
  other.train.run_dir = "runs/b";
  const std::vector<moe::ConfigChange> changes = moe::config_changes(c, other);
  REQUIRE(changes.size() == 3);
  CHECK(changes[0].key == "model.rope_theta");
  CHECK(changes[0].before == "10000.0");
  CHECK(changes[0].after == "5e+05");  // as to_toml writes it
  CHECK(changes[1].key == "moe.layer_routers");
  CHECK(changes[1].before == "[]");
  CHECK(changes[1].after == "[\"hash\"]");
  CHECK(changes[2].key == "train.run_dir");
  CHECK(changes[2].after == "\"runs/b\"");
}

TEST_CASE("docs/config.md documents every key and its example parses") {
  std::string docs_path = source_dir() + "/docs/config.md";
  std::string docs = read_text(docs_path);
  REQUIRE(!docs.empty());
  // Each section heading "## [section]" is followed by a table with one "| `key` |" row per key.
  std::istringstream resolved(moe::to_toml(moe::Config{}));
  std::string line, section_text;
  while (std::getline(resolved, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      auto begin = docs.find("\n## " + line);
      INFO("section " << line);
      REQUIRE(begin != std::string::npos);
      section_text = docs.substr(begin, docs.find("\n## ", begin + 1) - begin);
      continue;
    }
    std::string key = line.substr(0, line.find(' '));
    INFO("key " << key);
    CHECK_THAT(section_text, Contains("| `" + key + "` |"));
  }
  // The example is the first ```toml block.
  auto begin = docs.find("```toml\n");
  REQUIRE(begin != std::string::npos);
  begin += 8;
  std::string example = docs.substr(begin, docs.find("```", begin) - begin);
  moe::Config config = moe::parse_config(example, "docs/config.md");
  CHECK(config.moe.num_experts > 0);
}

TEST_CASE("huge sizes fail naming the key, and products naming every factor", "[config][errors]") {
  using Catch::Matchers::Contains;
  const std::string huge = "4611686018427387904";  // 2^62: products of it overflow 64 bits
  for (const char* key : {"model.d_model", "model.d_ff", "model.seq_len", "model.num_layers", "moe.d_expert",
                          "moe.num_experts", "train.micro_batch_size", "train.grad_accum", "train.eval_batches"}) {
    INFO(key);
    REQUIRE_THROWS_WITH(parse_set({std::string(key) + "=" + huge}),
                        Contains(std::string(key) + " = " + huge + " is larger than the limit of 2^") &&
                            !Contains("max_size"));
  }
  // Each factor within its own limit, the product not.
  REQUIRE_THROWS_WITH(parse_set({"model.vocab_size=16777216", "model.d_model=131072", "model.num_heads=1",
                                 "model.num_kv_heads=1"}),
                      Contains("model.vocab_size * model.d_model = 16777216 * 131072 = ") &&
                          Contains("embedding elements is larger than the limit of 2^40"));
  REQUIRE_THROWS_WITH(parse_set({"moe.num_experts=4096", "moe.granularity=64", "moe.d_expert=256"}),
                      Contains("moe.num_experts * moe.granularity = 4096 * 64 = ") &&
                          Contains("routed experts per layer is larger than the limit of 2^16"));
  REQUIRE_THROWS_WITH(parse_set({"train.micro_batch_size=65536", "model.seq_len=65536", "model.vocab_size=65536"}),
                      Contains("train.micro_batch_size * model.seq_len * model.vocab_size = 65536 * 65536 * 65536") &&
                          Contains("logits per micro-batch"));
  REQUIRE_NOTHROW(parse_set({"model.vocab_size=262144", "model.d_model=8192", "model.d_ff=32768",
                             "model.seq_len=131072", "model.num_layers=128", "model.num_heads=64",
                             "model.num_kv_heads=8", "train.micro_batch_size=1"}));
}
