// What the training-like commands share: reading the config with overrides, building the
// communicator and the trainer, resolving a --checkpoint argument, keeping stdout for JSON.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "src/config/config.h"
#include "src/train/trainer.h"

namespace moe {

struct RunOptions {
  std::string config_path;
  std::vector<std::string> overrides;
};
// CONFIG (positional; required unless `required` is false) and --set.
void add_run_options(CLI::App& cmd, RunOptions& options, bool required = true);

struct RunContext {
  Config config;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Trainer> trainer;
};
// The resolved config is written into the run directory by Trainer::train (after its lock and checks).
RunContext setup_run(const RunOptions& options, MpiEnv& env);
RunContext setup_run(Config config, MpiEnv& env);

// A --checkpoint argument (`flag` names it in errors): 'latest' is the newest step_<N> of run_dir;
// a run directory (one that holds checkpoints/) is its newest checkpoint; anything else is taken as is.
std::string resolve_checkpoint_arg(const std::string& flag, const std::string& arg, const std::string& run_dir);

// A model for inference (`moe generate`, `moe bench generate`): the config and weights of a
// checkpoint directory, on --device ("auto", "cpu" or "cuda"; a CPU run's f64 becomes bf16 on a GPU).
struct InferenceModel {
  Config config;
  std::unique_ptr<Model> model;
};
InferenceModel load_inference_model(const std::string& checkpoint, const std::string& device, bool verify);
// The same model built from a config, its weights drawn from train.seed (speed runs).
InferenceModel init_inference_model(Config config, const std::string& device);

// While alive, what the process writes to stdout goes to stderr: a command whose stdout carries
// JSON (`moe eval ... | jq`) keeps the human lines of the layers below it off that stream.
class StdoutToStderr {
 public:
  StdoutToStderr();
  ~StdoutToStderr();
  StdoutToStderr(const StdoutToStderr&) = delete;
  StdoutToStderr& operator=(const StdoutToStderr&) = delete;

 private:
  int saved_stdout_ = -1;
  int uncaught_ = 0;  // exceptions in flight at construction
};

}  // namespace moe
