// Run metrics: JSON lines in <run_dir>/metrics.jsonl (one object per logged step or
// evaluation; schema in docs/metrics.md), the rank-0 progress line, and MFU accounting.
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
// The bf16 dense GEMM ceiling measured on an H200 (775 TFLOP/s): `mfu_measured_ceiling`'s
// denominator there, and the "fraction of peak" of `moe bench op`.
inline constexpr double k_h200_peak_flops = 775e12;

// What MFU divides by, per GPU: the datasheet's dense bf16 peak (`mfu`, as Megatron-LM and
// torchtitan quote it) and, where measured, the GEMM ceiling (`mfu_measured_ceiling`).
struct DevicePeak {
  std::string device;           // the name as given
  double datasheet_flops = 0;   // 0: unknown device
  double measured_flops = 0;    // 0: not measured on this device
  std::string source;           // "datasheet", "train.peak_tflops" or "unknown"
};
// The table of docs/metrics.md, matched on a whole word of the driver's name ("NVIDIA H200",
// "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090"); peak_tflops > 0 overrides the datasheet peak.
DevicePeak lookup_device_peak(const std::string& device_name, double peak_tflops = 0);
// {"mfu", "mfu_measured_ceiling"} of a rate of FLOP/s per GPU (each only where its peak is known).
nlohmann::json mfu_fields(double flops_per_s_per_gpu, const DevicePeak& peak);

// The wall clock in UTC, ISO 8601 to the second ("2026-12-03T23:40:01Z").
std::string utc_timestamp();
// A count as "950", "12.3K", "1.50M", "4.21B".
std::string format_count(double count);
// Bytes as "512 KiB", "1.5 MiB", "3.2 GiB".
std::string format_bytes(double bytes);

std::string format_duration(double seconds);  // "1h02m", "3m25s", "12s"

// Wall-clock timing of steps and pipeline stages.
using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace moe
