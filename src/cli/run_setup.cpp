// Shared set-up of train / bench / eval: config, communicator on the run's device, trainer;
// --checkpoint resolution ('latest', a run directory) and the stdout-to-stderr guard.
#include "src/cli/run_setup.h"

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <filesystem>

#include "src/train/checkpoint.h"
#include "src/train/device_select.h"
#include "src/util/check.h"

namespace moe {

void add_run_options(CLI::App& cmd, RunOptions& options, bool required) {
  auto* config = cmd.add_option("config", options.config_path, "TOML config file");
  if (required) config->required();
  cmd.add_option("--set", options.overrides, "override a key: section.key=value (repeatable)");
}

RunContext setup_run(const RunOptions& options, MpiEnv& env) {
  return setup_run(load_config(options.config_path, options.overrides), env);
}

RunContext setup_run(Config config, MpiEnv& env) {
  RunContext ctx;
  ctx.config = std::move(config);
  Device device = select_device(ctx.config.train, env.local_rank());
  ctx.world = make_world_communicator(device);
  ctx.trainer = std::make_unique<Trainer>(ctx.config, env.local_rank(), *ctx.world);
  return ctx;
}

namespace {

void check_device_name(const std::string& device_name) {
  MOE_CHECK(device_name == "auto" || device_name == "cpu" || device_name == "cuda", "--device '", device_name,
            "' is not a known device (choices: auto, cpu, cuda)");
}

InferenceModel place_model(Config config, const std::string& device_name) {
  check_device_name(device_name);
  config.train.device = device_name;
  Device device = select_device(config.train, 0);
  InferenceModel m{config, std::make_unique<Model>(config.model, config.moe)};
  if (device.is_cuda()) m.config.train.dtype = "";  // a CPU run's f64 becomes bf16 on the GPU
  m.model->allocate(device, select_dtype(m.config.train, device));
  return m;
}

}  // namespace

InferenceModel load_inference_model(const std::string& checkpoint, const std::string& device, bool verify) {
  check_device_name(device);
  MOE_CHECK(std::filesystem::is_directory(checkpoint), "checkpoint directory ", checkpoint, " does not exist");
  InferenceModel m = place_model(load_config(checkpoint + "/config.toml"), device);
  read_checkpoint(checkpoint, m.model->params(), nullptr, verify);
  return m;
}

InferenceModel init_inference_model(Config config, const std::string& device) {
  InferenceModel m = place_model(std::move(config), device);
  m.model->initialize(m.config.train.seed);
  return m;
}

std::string resolve_checkpoint_arg(const std::string& flag, const std::string& arg, const std::string& run_dir) {
  namespace fs = std::filesystem;
  const bool latest = arg == "latest";
  if (!latest && !fs::is_directory(fs::path(arg) / "checkpoints")) return arg;
  const std::string dir = latest ? run_dir : arg;
  const fs::path root = fs::path(dir) / "checkpoints";
  MOE_CHECK(fs::is_directory(root), flag, " ", arg, ": ", root.string(), " does not exist");
  auto steps = list_checkpoints(dir);
  MOE_CHECK(!steps.empty(), flag, " ", arg, ": ", root.string(), " holds no step_<N> checkpoint");
  return steps.back().second;
}

StdoutToStderr::StdoutToStderr() : uncaught_(std::uncaught_exceptions()) {
  std::fflush(stdout);
  saved_stdout_ = dup(STDOUT_FILENO);
  MOE_CHECK(saved_stdout_ >= 0 && dup2(STDERR_FILENO, STDOUT_FILENO) >= 0, "cannot redirect stdout to stderr");
}

StdoutToStderr::~StdoutToStderr() {
  // Unwinding to an error: its one line stays alone (buffered human text is not flushed here,
  // as without the redirection).
  if (std::uncaught_exceptions() <= uncaught_) std::fflush(stdout);
  dup2(saved_stdout_, STDOUT_FILENO);
  close(saved_stdout_);
}

}  // namespace moe
