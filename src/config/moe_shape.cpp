// moe_shape: the one place that multiplies or divides by moe.granularity.
#include "src/config/moe_shape.h"

#include "src/util/check.h"

namespace moe {

MoeShape moe_shape(const MoeConfig& moe) {
  if (moe.num_experts <= 0) return {};
  const int64_t m = moe.granularity;
  MOE_CHECK(m >= 1, "moe.granularity = ", m, " must be at least 1");
  MOE_CHECK(moe.d_expert % m == 0, "moe.d_expert = ", moe.d_expert, " is not divisible by moe.granularity = ", m);
  MoeShape s;
  s.num_experts = moe.num_experts * m;
  s.top_k = moe.top_k * m;
  s.d_expert = moe.d_expert / m;
  s.num_shared = moe.num_shared_experts;
  s.d_shared = moe.d_shared > 0 ? moe.d_shared : s.d_expert;
  return s;
}

}  // namespace moe
