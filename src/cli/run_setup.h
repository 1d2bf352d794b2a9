// What the training-like commands share: reading the config with overrides and building the
// communicator and the trainer.
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
void add_run_options(CLI::App& cmd, RunOptions& options);

struct RunContext {
  Config config;
  std::unique_ptr<Communicator> world;
  std::unique_ptr<Trainer> trainer;
};
// The resolved config is written into the run directory by Trainer::train (after its lock and checks).
RunContext setup_run(const RunOptions& options, MpiEnv& env);

}  // namespace moe
