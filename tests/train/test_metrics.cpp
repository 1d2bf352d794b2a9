// MFU accounting: the datasheet peak looked up from the driver's device name, the measured
// ceiling as a second number, train.peak_tflops overriding; and the progress line's formats.
#include <catch2/catch.hpp>

#include <regex>

#include "src/train/metrics.h"

using namespace moe;

TEST_CASE("device names map to their datasheet dense bf16 peaks", "[train][metrics]") {
  CHECK(lookup_device_peak("NVIDIA H200").datasheet_flops == Approx(989.4e12));
  CHECK(lookup_device_peak("NVIDIA H100 80GB HBM3").datasheet_flops == Approx(989.4e12));
  CHECK(lookup_device_peak("NVIDIA H100 PCIe").datasheet_flops == Approx(756.5e12));
  CHECK(lookup_device_peak("NVIDIA A100-SXM4-80GB").datasheet_flops == Approx(312e12));
  CHECK(lookup_device_peak("NVIDIA A100 80GB PCIe").datasheet_flops == Approx(312e12));
  CHECK(lookup_device_peak("NVIDIA L40S").datasheet_flops == Approx(362.05e12));
  CHECK(lookup_device_peak("NVIDIA L40").datasheet_flops == Approx(181.05e12));
  CHECK(lookup_device_peak("NVIDIA L4").datasheet_flops == Approx(121e12));
  CHECK(lookup_device_peak("NVIDIA GeForce RTX 4090").datasheet_flops == Approx(165.2e12));
  CHECK(lookup_device_peak("NVIDIA GH200 480GB").datasheet_flops == Approx(989.4e12));
  CHECK(lookup_device_peak("NVIDIA H200").source == "datasheet");
  // Whole words only: an A10G is not an A10, nor an A100 an A10.
  CHECK(lookup_device_peak("NVIDIA A10G").datasheet_flops == 0);
  CHECK(lookup_device_peak("NVIDIA A10G").source == "unknown");
  CHECK(lookup_device_peak("NVIDIA A10").datasheet_flops == Approx(125e12));
  CHECK(lookup_device_peak("Tesla T4").datasheet_flops == 0);
}

TEST_CASE("MFU divides by the datasheet peak, mfu_measured_ceiling by the H200's 775 TFLOP/s", "[train][metrics]") {
  const DevicePeak h200 = lookup_device_peak("NVIDIA H200");
  CHECK(h200.measured_flops == Approx(775e12));
  nlohmann::json m = mfu_fields(494.7e12, h200);
  CHECK(m["mfu"].get<double>() == Approx(0.5));
  CHECK(m["mfu_measured_ceiling"].get<double>() == Approx(494.7 / 775.0));
  // The ceiling was measured on an H200 only; an A100 gets the datasheet number alone.
  nlohmann::json a100 = mfu_fields(156e12, lookup_device_peak("NVIDIA A100-SXM4-40GB"));
  CHECK(a100["mfu"].get<double>() == Approx(0.5));
  CHECK(!a100.contains("mfu_measured_ceiling"));
  // An unknown device reports no MFU unless train.peak_tflops names its peak.
  CHECK(mfu_fields(1e12, lookup_device_peak("Tesla T4")).empty());
  const DevicePeak t4 = lookup_device_peak("Tesla T4", 65);
  CHECK(t4.source == "train.peak_tflops");
  CHECK(mfu_fields(32.5e12, t4)["mfu"].get<double>() == Approx(0.5));
  // The override replaces a known datasheet peak too (and keeps the measured ceiling).
  const DevicePeak capped = lookup_device_peak("NVIDIA H200", 700);
  CHECK(capped.datasheet_flops == Approx(700e12));
  CHECK(capped.measured_flops == Approx(775e12));
}

TEST_CASE("the progress line's counts, bytes and timestamp", "[train][metrics]") {
  CHECK(format_count(950) == "950");
  CHECK(format_count(12345) == "12.3K");
  CHECK(format_count(1.5e6) == "1.50M");
  CHECK(format_count(4.21e9) == "4.21B");
  CHECK(format_bytes(512) == "512 B");
  CHECK(format_bytes(1536) == "1.5 KiB");
  CHECK(format_bytes(3.5 * 1024 * 1024 * 1024) == "3.5 GiB");
  CHECK(std::regex_match(utc_timestamp(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
}
