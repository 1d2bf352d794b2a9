// Counter-based parameter initialisation: every element's initial value is a pure function of
// (seed, parameter name, element index in the whole parameter), so a rank draws only what it holds.
#pragma once

#include <cstdint>
#include <string>

#include "src/nn/param_store.h"

namespace moe {

// 64-bit FNV-1a of the parameter's canonical name (part of the Philox counter).
uint64_t param_name_hash(const std::string& name);

// The mapping (docs/decisions.md, "Parameter initialisation"): element i of a parameter with
// init = normal(0, std) is
//   x[0..3] = Philox4x32-10(key = {lo32(seed), hi32(seed)},
//                           counter = {lo32(i/4), hi32(i/4), lo32(h), hi32(h)}),  h = param_name_hash(name)
//   (a, b) = (x[0], x[1]) for i%4 in {0,1}, (x[2], x[3]) for i%4 in {2,3}
//   u1 = (a + 0.5) / 2^32, u2 = (b + 0.5) / 2^32, r = sqrt(-2 ln u1)
//   z = r cos(2 pi u2) for even i, r sin(2 pi u2) for odd i;  value = std * z
// computed in double and rounded once to the master dtype.
double init_normal_value(uint64_t seed, uint64_t name_hash, int64_t index, double std);

// Writes `count` values of the whole (unsplit) parameter starting at element `full_begin` to
// out[0, count): std * z as above. Serial; init_local_values parallelises over calls.
template <typename T>
void fill_normal(uint64_t seed, uint64_t name_hash, double std, int64_t full_begin, int64_t count, T* out);

// The element of the whole parameter that element `local` of this rank's part of `info` is
// (ParamInfo's row or column shard), and how many local elements from there on are consecutive
// in the whole parameter too.
struct FullIndexRun {
  int64_t full_index = 0, length = 0;
};
FullIndexRun full_index_run(const ParamInfo& info, int64_t local);

// out[0, local_end - local_begin) = the initial values of local elements [local_begin, local_end)
// of `info` (its init kind: normal, zeros or ones), T = float or double. num_threads <= 0: the
// OpenMP default. The values do not depend on num_threads.
template <typename T>
void init_local_values(const ParamInfo& info, uint64_t seed, int64_t local_begin, int64_t local_end, T* out,
                       int num_threads);

}  // namespace moe
