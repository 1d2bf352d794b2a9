// The run directory over a run's life: its lock, a fresh run refused over an old one (or the old
// one cleared), the resume check of the checkpoint's config, metrics cut back to the resumed step,
// keep-last-k pruning and the cleanup of staging directories left by killed saves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/io/dir_lock.h"

namespace moe {

// Rank 0's set-up of <train.run_dir> before training (rank 0 alone writes the run directory, so it
// alone locks it): takes the lock, removes abandoned staging (remove_abandoned_staging), then for
// a fresh run check_fresh_run_dir, for a resume check_resume and the metrics cut back to the
// checkpoint's step; finally writes the resolved config.toml. global_batch: sequences per step
// in this run's layout. The returned lock must live as long as the run.
DirLock prepare_run_dir(const Config& config, int64_t global_batch);

// Removes what killed saves left under <run_dir>/checkpoints: "step_N.tmp-<pid>" staging
// directories, and "step_N.old-<pid>" (renamed back to step_N where step_N is missing: a kill
// between the two renames of a replacing save), and "<file>.tmp-<pid>" files in run_dir. Only
// safe under the run directory's lock. Returns the paths removed or restored.
std::vector<std::string> remove_abandoned_staging(const std::string& run_dir);

// A fresh run (train.resume = ""): refuses a run_dir holding checkpoints or a non-empty
// metrics.jsonl, saying how to resume or overwrite; with overwrite, removes both first.
void check_fresh_run_dir(const std::string& run_dir, bool overwrite);

// Whether a key may differ between a checkpoint's config and the resuming run's: it changes
// neither the model nor the data order (docs/config.md, "Resuming").
bool is_resume_safe_key(const std::string& key);

struct ResumeChanges {
  std::vector<ConfigChange> refused, allowed;
};
// The keys `now` changes from `saved`, sorted into refused and allowed. The batch keys
// (train.micro_batch_size, train.grad_accum, parallel.*) are allowed when the global batch
// (sequences per step, which with the seed fixes the data order) is the same; when it is not,
// a refused pseudo-key "global batch" is added.
ResumeChanges resume_changes(const Config& saved, int64_t saved_global_batch, const Config& now,
                             int64_t global_batch);

// Resuming `checkpoint` with `now`: refuses (one error listing every refused key, before and
// after) a config that changes the model or the data order, or a checkpoint already at or past
// train.steps; prints the allowed changes. Returns the checkpoint's step.
int64_t check_resume(const std::string& checkpoint, const Config& now, int64_t global_batch);

// Rewrites metrics_path (atomically) without the records of steps after `step`, and without
// torn lines (a kill in the middle of a write); leaves it untouched when nothing is dropped.
// Returns the number of lines dropped.
int64_t truncate_metrics(const std::string& metrics_path, int64_t step);

// train.keep_last = K > 0: removes all but the K newest checkpoints under run_dir, never the
// newest (what train.resume = "latest" picks) nor `just_saved`. Returns the removed paths.
std::vector<std::string> prune_checkpoints(const std::string& run_dir, int64_t keep_last,
                                           const std::string& just_saved);

}  // namespace moe
