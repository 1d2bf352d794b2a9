// Hugging Face checkpoint files: the tensors of model.safetensors or of the shards listed by
// model.safetensors.index.json, read as f32 from BF16/F16/F32, and written back in one dtype.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace moe {

// The storage dtypes of HF checkpoints this converter reads and writes.
enum class HfDType { f32, bf16, f16 };
HfDType hf_dtype_from_name(const std::string& name);  // "F32" | "BF16" | "F16" (safetensors) or
                                                      // "float32" | "bfloat16" | "float16" (torch_dtype)
const char* hf_dtype_safetensors_name(HfDType dtype);  // "F32" | "BF16" | "F16"
const char* hf_dtype_torch_name(HfDType dtype);        // "float32" | "bfloat16" | "float16"

// One tensor on the host, values widened to f32 (exact for all three dtypes).
struct HfTensor {
  std::vector<int64_t> shape;
  HfDType dtype = HfDType::f32;  // as stored
  std::vector<float> values;
};

// Every tensor of the checkpoint in dir: model.safetensors.index.json's weight_map when present
// (each shard read once), else model.safetensors. Errors name the file and the tensor.
std::map<std::string, HfTensor> read_hf_tensors(const std::filesystem::path& dir);

// Writes the tensors (name order) into one safetensors file in `dtype` (f32 values narrowed with
// round-to-nearest-even), with {"format": "pt"} metadata as transformers writes.
void write_hf_tensors(const std::filesystem::path& path, const std::map<std::string, HfTensor>& tensors,
                      HfDType dtype);

// f16 bits <-> f32 (IEEE binary16, round to nearest even; subnormals, inf and nan kept).
float f16_bits_to_f32(uint16_t bits);
uint16_t f32_to_f16_bits(float value);

}  // namespace moe
