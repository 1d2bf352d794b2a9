// Metrics records and progress formatting.
#include "src/train/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "src/util/check.h"

namespace moe {

MetricsWriter::MetricsWriter(const std::string& path) {
  if (path.empty()) return;
  out_.open(path, std::ios::app);
  MOE_CHECK(out_.good(), "cannot open metrics file ", path);
}

void MetricsWriter::write(const nlohmann::json& record) {
  if (!out_.is_open()) return;
  out_ << record.dump() << '\n';
  out_.flush();
}

double train_flops_per_token(int64_t active_params, int64_t num_layers, int64_t d_model, int64_t seq_len) {
  return 6.0 * static_cast<double>(active_params) +
         12.0 * static_cast<double>(num_layers) * static_cast<double>(d_model) * static_cast<double>(seq_len);
}

namespace {

struct PeakEntry {
  const char* name;   // a whole word (or words) of the driver's device name
  double tflops;      // dense bf16 tensor-core TFLOP/s (fp32 accumulate), from the vendor datasheet
  double measured;    // measured bf16 GEMM ceiling, TFLOP/s (0: not measured)
};
// More specific names first (the first match wins).
constexpr PeakEntry k_peaks[] = {
    {"H100 PCIe", 756.5, 0}, {"H100 NVL", 835.5, 0}, {"H200 NVL", 835.5, 0}, {"H100", 989.4, 0},
    {"H200", 989.4, 775},    {"GH200", 989.4, 0},    {"H800", 989.4, 0},     {"B200", 2250, 0},
    {"A100", 312, 0},        {"A800", 312, 0},       {"A30", 165, 0},        {"A10", 125, 0},
    {"A40", 149.7, 0},       {"RTX A6000", 154.8, 0}, {"L40S", 362.05, 0},  {"L40", 181.05, 0},
    {"L4", 121, 0},          {"RTX 4090", 165.2, 0}, {"RTX 3090", 71, 0},
};

// Whether `word` occurs in `text` with no letter or digit right before or after it.
bool contains_word(const std::string& text, const std::string& word) {
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
    const bool left = at == 0 || !std::isalnum(static_cast<unsigned char>(text[at - 1]));
    const size_t end = at + word.size();
    const bool right = end == text.size() || !std::isalnum(static_cast<unsigned char>(text[end]));
    if (left && right) return true;
  }
  return false;
}

}  // namespace

DevicePeak lookup_device_peak(const std::string& device_name, double peak_tflops) {
  DevicePeak peak{device_name, 0, 0, "unknown"};
  for (const PeakEntry& e : k_peaks) {
    if (!contains_word(device_name, e.name)) continue;
    peak = {device_name, e.tflops * 1e12, e.measured * 1e12, "datasheet"};
    break;
  }
  if (peak_tflops > 0) {
    peak.datasheet_flops = peak_tflops * 1e12;
    peak.source = "train.peak_tflops";
  }
  return peak;
}

nlohmann::json mfu_fields(double flops_per_s_per_gpu, const DevicePeak& peak) {
  nlohmann::json out = nlohmann::json::object();
  if (peak.datasheet_flops > 0) out["mfu"] = flops_per_s_per_gpu / peak.datasheet_flops;
  if (peak.measured_flops > 0) out["mfu_measured_ceiling"] = flops_per_s_per_gpu / peak.measured_flops;
  return out;
}

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return buf;
}

std::string format_count(double count) {
  char buf[32];
  if (count >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2fB", count / 1e9);
  } else if (count >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.2fM", count / 1e6);
  } else if (count >= 1e3) {
    std::snprintf(buf, sizeof buf, "%.1fK", count / 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.0f", count);
  }
  return buf;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

std::string format_duration(double seconds) {
  auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s % 3600 / 60));
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  }
  return buf;
}

}  // namespace moe
