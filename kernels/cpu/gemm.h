// CPU reference GEMM (row-major, BLAS-style transposes and leading dimensions) behind
// ops::matmul and the attention kernels. Raw pointers only; Eigen stays inside gemm.cpp.
#pragma once

#include <cstdint>

namespace moe::cpu {

// a[M,K] (or [K,M] when trans_a), b[K,N] (or [N,K] when trans_b), c[M,N], all row-major:
// c = alpha * op(a) @ op(b) + beta * c. With beta == 0, c is written without being read.
template <typename T>
void gemm(const T* a, bool trans_a, const T* b, bool trans_b, T* c, int64_t m, int64_t n, int64_t k, T alpha, T beta);

// As gemm, on sub-matrices whose rows lie lda, ldb, ldc elements apart (a head's slice of a
// [T, H*hd] activation, for instance).
template <typename T>
void gemm_strided(const T* a, int64_t lda, bool trans_a, const T* b, int64_t ldb, bool trans_b, T* c, int64_t ldc,
                  int64_t m, int64_t n, int64_t k, T alpha, T beta);

}  // namespace moe::cpu
