// CPU reference of the on-device Switch statistics (kernels/cuda/balance.cu).
#include "kernels/cpu/balance.h"

#include <algorithm>
#include <vector>

#include "src/util/check.h"

namespace moe::cpu {

template <typename T>
void switch_balance(const T* score_sums, const int32_t* ids, int64_t tokens, int64_t slots, int64_t num_experts,
                    double alpha, double* value, T* grad_row) {
  std::vector<int64_t> counts(static_cast<size_t>(num_experts), 0);
  for (int64_t n = 0; n < tokens * slots; ++n) {
    MOE_CHECK(ids[n] >= -1 && ids[n] < num_experts, "switch_balance: expert id ", ids[n], " of slot ", n,
              " is outside [0,", num_experts, ")");
    if (ids[n] >= 0) ++counts[static_cast<size_t>(ids[n])];
  }
  const double t = static_cast<double>(std::max<int64_t>(tokens, 1)), e = static_cast<double>(num_experts);
  double total = 0;
  for (int64_t i = 0; i < num_experts; ++i) {
    const double f = static_cast<double>(counts[static_cast<size_t>(i)]) / (static_cast<double>(slots) * t);
    total += alpha * e * f * (static_cast<double>(score_sums[i]) / t);
    grad_row[i] = static_cast<T>(alpha * e * f / t);
  }
  value[0] = total;
}

template void switch_balance<float>(const float*, const int32_t*, int64_t, int64_t, int64_t, double, double*, float*);
template void switch_balance<double>(const double*, const int32_t*, int64_t, int64_t, int64_t, double, double*,
                                     double*);

}  // namespace moe::cpu
