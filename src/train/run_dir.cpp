// Run-directory policy: lock, fresh-run refusal or overwrite, resume config check, metrics cut
// back after a resume, keep-last-k pruning and cleanup of what killed saves left behind.
#include "src/train/run_dir.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "src/io/atomic_dir.h"
#include "src/train/checkpoint.h"
#include "src/util/check.h"
#include "src/util/log.h"

namespace moe {

namespace fs = std::filesystem;

namespace {

// Keys a resume may change freely: how long the run goes on, what it logs, evaluates and keeps,
// where it runs and how the work is split (the global batch is checked separately), and the
// optimizer and schedule settings (they change how training continues, not what it trains on).
const char* const k_resume_safe_keys[] = {
    "train.steps",     "train.log_every", "train.eval_every",       "train.eval_batches", "train.save_every",
    "train.keep_last", "train.run_dir",   "train.resume",           "train.overwrite",    "train.device",
    "train.dtype",     "train.recompute", "train.micro_batch_size", "train.grad_accum",   "data.val_path",
    "data.val",        "data.tokenizer",  "moe.experts_impl", "train.peak_tflops", "train.head_chunk_tokens",
    "train.init_from"};  // a resumed run reads its own checkpoint, never init_from
const char* const k_resume_safe_sections[] = {"parallel.", "optim.", "schedule."};

std::string join_changes(const std::vector<ConfigChange>& changes) {
  std::string out;
  for (const ConfigChange& c : changes) out += (out.empty() ? "" : ", ") + c.key + " " + c.before + " -> " + c.after;
  return out;
}

// Removes a directory tree by renaming it aside first, so a kill in the middle never leaves a
// half-removed step_N that looks like a checkpoint (remove_abandoned_staging finishes the job).
void remove_checkpoint_dir(const fs::path& dir) {
  fs::path aside = dir.parent_path() / (dir.filename().string() + ".deleting-" + std::to_string(::getpid()));
  std::error_code error;
  fs::rename(dir, aside, error);
  MOE_CHECK(!error, "cannot remove checkpoint ", dir.string(), ": ", error.message());
  fs::remove_all(aside, error);
  MOE_CHECK(!error, "cannot remove ", aside.string(), ": ", error.message());
}

}  // namespace

std::vector<std::string> remove_abandoned_staging(const std::string& run_dir) {
  static const std::regex staged_dir("(step_[0-9]+)\\.(tmp|old|deleting)-[0-9]+");
  static const std::regex staged_file(".+\\.tmp-[0-9]+");
  std::vector<std::string> done;
  std::error_code error;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::vector<fs::path> staged;  // collected first: the directory is changed below
  if (fs::is_directory(root, error)) {
    for (const auto& entry : fs::directory_iterator(root)) staged.push_back(entry.path());
  }
  for (const fs::path& path : staged) {
    std::smatch m;
    const std::string name = path.filename().string();
    if (!std::regex_match(name, m, staged_dir)) continue;
    const fs::path final_path = root / m[1].str();
    if (m[2] == "old" && !fs::exists(final_path)) {
      fs::rename(path, final_path);  // the only copy of step_N: a save was killed mid-swap
    } else {
      fs::remove_all(path);
    }
    done.push_back(path.string());
  }
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), staged_file)) {
      files.push_back(entry.path());
    }
  }
  for (const fs::path& path : files) {
    fs::remove(path);
    done.push_back(path.string());
  }
  return done;
}

void check_fresh_run_dir(const std::string& run_dir, bool overwrite) {
  const auto steps = list_checkpoints(run_dir);
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  std::error_code error;
  const bool has_metrics = fs::exists(metrics, error) && fs::file_size(metrics, error) > 0;
  if (steps.empty() && !has_metrics) return;
  std::string held = steps.empty() ? "" : "checkpoints up to step_" + std::to_string(steps.back().first);
  if (has_metrics) held += (held.empty() ? "" : " and ") + std::string("metrics.jsonl");
  MOE_CHECK(overwrite, "train.run_dir = ", run_dir, " already holds a run (", held,
            "): resume it with train.resume=latest, or set train.overwrite=true to delete its checkpoints and "
            "metrics, or choose another train.run_dir");
  for (const auto& step : steps) remove_checkpoint_dir(step.second);
  if (has_metrics) fs::remove(metrics);
  log::info("train.overwrite: removed {} from {}", held, run_dir);
}

bool is_resume_safe_key(const std::string& key) {
  for (const char* safe : k_resume_safe_keys) {
    if (key == safe) return true;
  }
  for (const char* section : k_resume_safe_sections) {
    if (key.rfind(section, 0) == 0) return true;
  }
  return false;
}

ResumeChanges resume_changes(const Config& saved, int64_t saved_global_batch, const Config& now,
                             int64_t global_batch) {
  ResumeChanges out;
  for (ConfigChange& change : config_changes(saved, now)) {
    (is_resume_safe_key(change.key) ? out.allowed : out.refused).push_back(std::move(change));
  }
  if (saved_global_batch != global_batch) {
    out.refused.push_back({"the global batch (sequences per step: train.micro_batch_size x train.grad_accum x "
                           "data-parallel ranks)",
                           std::to_string(saved_global_batch), std::to_string(global_batch)});
  }
  return out;
}

int64_t check_resume(const std::string& checkpoint, const Config& now, int64_t global_batch) {
  const TrainerState state = read_trainer_state(checkpoint, now.train.verify_checkpoints);
  MOE_CHECK(state.step < now.train.steps, "cannot resume from ", checkpoint, ": it is at step ", state.step,
            " and train.steps = ", now.train.steps, ", so nothing is left to train (raise train.steps)");
  const std::string saved_path = checkpoint + "/config.toml";
  const Config saved = load_config(saved_path);
  // A step-0 checkpoint (moe upcycle) has drawn no batch yet: its global batch may change.
  int64_t saved_batch = global_batch;
  if (state.step > 0) {
    const int64_t model_ranks = std::max<int64_t>(1, saved.parallel.tp * saved.parallel.pp);
    const int64_t saved_dp = std::max<int64_t>(1, state.world_size / model_ranks);
    saved_batch = saved.train.micro_batch_size * saved.train.grad_accum * saved_dp;
  }
  const ResumeChanges changes = resume_changes(saved, saved_batch, now, global_batch);
  MOE_CHECK(changes.refused.empty(), "cannot resume from ", checkpoint,
            ": the config changes the model or the data order: ", join_changes(changes.refused),
            "; keep them as in ", saved_path, " or start a new train.run_dir");
  if (!changes.allowed.empty()) {
    log::info("resume: config changes from {}: {}", saved_path, join_changes(changes.allowed));
  }
  return state.step;
}

int64_t truncate_metrics(const std::string& metrics_path, int64_t step) {
  std::error_code error;
  if (!fs::exists(metrics_path, error)) return 0;
  require_regular_file(metrics_path, "cannot open metrics file");
  std::ifstream in(metrics_path, std::ios::binary);
  MOE_CHECK(in.good(), "cannot open metrics file ", metrics_path);
  std::string kept, line;
  int64_t dropped = 0;
  while (std::getline(in, line)) {
    const bool complete = !in.eof();  // the last line without its newline is torn
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    const bool whole = complete && record.is_object();
    const bool after = whole && record.contains("step") && record["step"].is_number_integer() &&
                       record["step"].get<int64_t>() > step;
    if (!whole || after) {
      ++dropped;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped > 0) write_file_atomically(metrics_path, kept);
  return dropped;
}

std::vector<std::string> prune_checkpoints(const std::string& run_dir, int64_t keep_last,
                                           const std::string& just_saved) {
  std::vector<std::string> removed;
  if (keep_last <= 0) return removed;
  const auto steps = list_checkpoints(run_dir);
  const fs::path saved = fs::path(just_saved).lexically_normal();
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) {  // the newest K stay
    if (fs::path(steps[i].second).lexically_normal() == saved) continue;
    remove_checkpoint_dir(steps[i].second);
    removed.push_back(steps[i].second);
  }
  return removed;
}

DirLock prepare_run_dir(const Config& config, int64_t global_batch) {
  const TrainConfig& t = config.train;
  std::error_code error;
  fs::create_directories(t.run_dir, error);
  MOE_CHECK(!error, "cannot create train.run_dir = ", t.run_dir, ": ", error.message());
  DirLock lock(t.run_dir);
  for (const std::string& path : remove_abandoned_staging(t.run_dir)) {
    log::info("removed {} (left by a killed save)", path);
  }
  if (t.resume.empty()) {
    check_fresh_run_dir(t.run_dir, t.overwrite);
  } else {
    const std::string checkpoint = resolve_checkpoint(t.run_dir, t.resume);
    const int64_t step = check_resume(checkpoint, config, global_batch);
    const int64_t dropped = truncate_metrics(t.run_dir + "/metrics.jsonl", step);
    if (dropped > 0) {
      log::info("metrics.jsonl: dropped {} records after step {} (the run resumes from there)", dropped, step);
    }
  }
  write_file_atomically(t.run_dir + "/config.toml", to_toml(config));
  return lock;
}

}  // namespace moe
