// Counter-based initial values (Random123's Philox4x32-10 + Box-Muller): a pure function of
// (seed, name, index in the whole parameter), evaluated only for the elements a rank holds.
#include "src/nn/param_init.h"

#include <omp.h>

#include <Random123/philox.h>

#include <algorithm>
#include <cmath>

#include "src/util/check.h"

namespace moe {

namespace {

constexpr double k_two_pi = 6.283185307179586476925286766559;
constexpr double k_inv_2_32 = 1.0 / 4294967296.0;
// Elements per OpenMP task: large enough that scheduling costs nothing, small enough to balance.
constexpr int64_t k_chunk = int64_t{1} << 15;

uint32_t lo32(uint64_t v) { return static_cast<uint32_t>(v); }
uint32_t hi32(uint64_t v) { return static_cast<uint32_t>(v >> 32); }

// The four standard normals of Philox block `block` (elements 4*block .. 4*block + 3).
void normal_block(uint64_t seed, uint64_t name_hash, uint64_t block, double z[4]) {
  r123::Philox4x32 rng;
  const r123::Philox4x32::key_type key = {{lo32(seed), hi32(seed)}};
  const r123::Philox4x32::ctr_type ctr = {{lo32(block), hi32(block), lo32(name_hash), hi32(name_hash)}};
  const r123::Philox4x32::ctr_type x = rng(ctr, key);
  for (int pair = 0; pair < 2; ++pair) {
    const double u1 = (static_cast<double>(x[2 * pair]) + 0.5) * k_inv_2_32;
    const double u2 = (static_cast<double>(x[2 * pair + 1]) + 0.5) * k_inv_2_32;
    const double r = std::sqrt(-2.0 * std::log(u1));
    z[2 * pair] = r * std::cos(k_two_pi * u2);
    z[2 * pair + 1] = r * std::sin(k_two_pi * u2);
  }
}

}  // namespace

uint64_t param_name_hash(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // the FNV-1a 64-bit offset basis
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

double init_normal_value(uint64_t seed, uint64_t name_hash, int64_t index, double std) {
  double z[4];
  normal_block(seed, name_hash, static_cast<uint64_t>(index) / 4, z);
  return std * z[index % 4];
}

template <typename T>
void fill_normal(uint64_t seed, uint64_t name_hash, double std, int64_t full_begin, int64_t count, T* out) {
  MOE_CHECK(full_begin >= 0 && count >= 0, "fill_normal: bad range [", full_begin, ",", full_begin + count, ")");
  double z[4];
  for (int64_t i = full_begin, end = full_begin + count; i < end;) {
    const int64_t block = i / 4, block_end = std::min(end, 4 * block + 4);
    normal_block(seed, name_hash, static_cast<uint64_t>(block), z);
    for (; i < block_end; ++i) *out++ = static_cast<T>(std * z[i % 4]);
  }
}

FullIndexRun full_index_run(const ParamInfo& p, int64_t local) {
  if (p.is_col_shard()) {
    // Local row r holds, block after block, columns [col_offset, col_offset + cols) of each block.
    const int64_t local_cols = p.shape.back(), full_cols = p.full_shape.back();
    const int64_t cols = local_cols / p.col_blocks, block = full_cols / p.col_blocks;
    const int64_t r = local / local_cols, in_row = local % local_cols;
    const int64_t b = in_row / cols, c = in_row % cols;
    return {r * full_cols + b * block + p.col_offset + c, cols - c};
  }
  const int64_t rest = p.numel() - local;
  if (p.is_row_shard()) return {local + p.row_offset * (shape_numel(p.full_shape) / p.full_shape[0]), rest};
  return {local, rest};
}

template <typename T>
void init_local_values(const ParamInfo& p, uint64_t seed, int64_t local_begin, int64_t local_end, T* out,
                       int num_threads) {
  MOE_CHECK(local_begin >= 0 && local_begin <= local_end && local_end <= p.numel(), "parameter '", p.name,
            "': initial values [", local_begin, ",", local_end, ") outside its ", p.numel(), " elements");
  const int64_t count = local_end - local_begin;
  if (p.init != ParamInit::normal) {
    std::fill(out, out + count, static_cast<T>(p.init == ParamInit::ones ? 1.0 : 0.0));
    return;
  }
  const uint64_t name_hash = param_name_hash(p.name);
  const int64_t num_chunks = (count + k_chunk - 1) / k_chunk;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads > 0 ? num_threads : omp_get_max_threads(),
                                                         std::max<int64_t>(num_chunks, 1)));
  // Each chunk writes its own slice of `out` from pure functions of the index: any thread
  // count and any schedule give the same values.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
    const int64_t begin = local_begin + chunk * k_chunk, end = std::min(local_end, begin + k_chunk);
    for (int64_t local = begin; local < end;) {
      const FullIndexRun run = full_index_run(p, local);
      const int64_t n = std::min(run.length, end - local);
      fill_normal(seed, name_hash, p.init_std, run.full_index, n, out + (local - local_begin));
      local += n;
    }
  }
}

template void fill_normal<float>(uint64_t, uint64_t, double, int64_t, int64_t, float*);
template void fill_normal<double>(uint64_t, uint64_t, double, int64_t, int64_t, double*);
template void init_local_values<float>(const ParamInfo&, uint64_t, int64_t, int64_t, float*, int);
template void init_local_values<double>(const ParamInfo&, uint64_t, int64_t, int64_t, double*, int);

}  // namespace moe
