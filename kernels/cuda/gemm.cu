// Dense GEMM through cublasGemmEx (bf16 x bf16 -> bf16/f32, CUBLAS_COMPUTE_32F). Row-major
// operands are passed as their column-major transposes: c^T = op(b)^T op(a)^T.
#include "kernels/cuda/gemm.h"

#include <climits>

#include "kernels/cuda/cublas_handle.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/elementwise.h"

namespace moe::cuda {

using kernels::FloatType;

// a[m,k]/[k,m], b[k,n]/[n,k] bf16 -> c[m,n] bf16 or f32
void gemm_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, void* c, FloatType c_type, const GemmShape& s,
               float alpha, float beta, cudaStream_t stream) {
  MOE_CHECK(s.m >= 0 && s.n >= 0 && s.k >= 0, "gemm: negative size");
  MOE_CHECK(s.m <= INT_MAX && s.n <= INT_MAX && s.k <= INT_MAX, "gemm: size beyond int range: ", s.m, "x", s.n, "x",
            s.k);
  if (s.m == 0 || s.n == 0) return;
  if (s.k == 0) {  // empty sum: c = beta * c (cuBLAS behaviour for k == 0 is not relied upon)
    int64_t count = s.m * s.n;
    if (beta == 0.0f) {
      CUDA_CHECK(cudaMemsetAsync(c, 0, static_cast<size_t>(count) * (c_type == FloatType::f32 ? 4 : 2), stream));
    } else {
      scale_inplace(c, c_type, count, beta, stream);
    }
    return;
  }
  cublasHandle_t handle = cublas_handle();
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  const int m = static_cast<int>(s.m), n = static_cast<int>(s.n), k = static_cast<int>(s.k);
  const int lda = s.trans_a ? m : k;  // row-major leading dimensions
  const int ldb = s.trans_b ? k : n;
  const cublasOperation_t op_b = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cudaDataType_t c_dtype = c_type == FloatType::f32 ? CUDA_R_32F : CUDA_R_16BF;
  CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, n, m, k, &alpha, b, CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda, &beta, c,
                            c_dtype, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace moe::cuda
