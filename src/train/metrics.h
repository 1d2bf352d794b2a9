// Run metrics: JSON lines in <run_dir>/metrics.jsonl (one object per logged step or
// evaluation), the rank-0 progress line, and MFU accounting.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe {

class MetricsWriter {
 public:
  // Appends to path (creates it); a writer with an empty path writes nothing (ranks != 0).
  explicit MetricsWriter(const std::string& path);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

// FLOPs per token of a training step (forward + backward) as in ../shared/anchors.md:
// 6 * active parameters + 12 * layers * d_model * seq_len (attention scores and values).
double train_flops_per_token(int64_t active_params, int64_t num_layers, int64_t d_model, int64_t seq_len);
// The bf16 dense GEMM ceiling MFU is quoted against (H200, measured: 775 TFLOP/s).
inline constexpr double k_h200_peak_flops = 775e12;

std::string format_duration(double seconds);  // "1h02m", "3m25s", "12s"

// Wall-clock timing of steps and pipeline stages.
using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace moe
