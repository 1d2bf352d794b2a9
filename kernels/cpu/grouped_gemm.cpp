// CPU reference grouped GEMM: the dense reference GEMM (kernels/cpu/gemm.h) once per expert with
// rows, so it computes exactly what the per-expert loop does.
#include "kernels/cpu/grouped_gemm.h"

#include "kernels/cpu/gemm.h"
#include "src/util/check.h"

namespace moe::cpu {

namespace {

void check_offsets(const int32_t* offsets, const kernels::GroupedGemmShape& s) {
  MOE_CHECK(offsets[0] == 0, "grouped gemm: offsets[0] is ", offsets[0], ", not 0");
  for (int64_t e = 0; e < s.num_experts; ++e) {
    MOE_CHECK(offsets[e + 1] >= offsets[e], "grouped gemm: offsets decrease at expert ", e, " (", offsets[e], " then ",
              offsets[e + 1], ")");
  }
  // Rows past offsets[E] are padding (the dispatcher sizes its rows by a bound): left alone.
  MOE_CHECK(offsets[s.num_experts] <= s.rows, "grouped gemm: offsets end at ", offsets[s.num_experts], " but x has only ",
            s.rows, " rows");
}

}  // namespace

template <typename T>
void grouped_gemm(const T* x, const int32_t* offsets, const T* w, bool trans_w, T* y,
                  const kernels::GroupedGemmShape& s) {
  check_offsets(offsets, s);
  for (int64_t e = 0; e < s.num_experts; ++e) {
    const int64_t begin = offsets[e], count = offsets[e + 1] - begin;
    if (count == 0) continue;
    gemm<T>(x + begin * s.k, false, w + e * s.k * s.n, trans_w, y + begin * s.n, count, s.n, s.k, T(1), T(0));
  }
}

template <typename T>
void grouped_gemm_weight_grad(const T* x, const int32_t* offsets, const T* dy, T* dw,
                              const kernels::GroupedGemmShape& s) {
  check_offsets(offsets, s);
  for (int64_t e = 0; e < s.num_experts; ++e) {
    const int64_t begin = offsets[e], count = offsets[e + 1] - begin;
    if (count == 0) continue;
    gemm<T>(x + begin * s.k, true, dy + begin * s.n, false, dw + e * s.k * s.n, s.k, s.n, count, T(1), T(1));
  }
}

template void grouped_gemm<float>(const float*, const int32_t*, const float*, bool, float*,
                                  const kernels::GroupedGemmShape&);
template void grouped_gemm<double>(const double*, const int32_t*, const double*, bool, double*,
                                   const kernels::GroupedGemmShape&);
template void grouped_gemm_weight_grad<float>(const float*, const int32_t*, const float*, float*,
                                              const kernels::GroupedGemmShape&);
template void grouped_gemm_weight_grad<double>(const double*, const int32_t*, const double*, double*,
                                               const kernels::GroupedGemmShape&);

}  // namespace moe::cpu
