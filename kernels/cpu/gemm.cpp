// CPU reference GEMM: Eigen maps over row-major (optionally strided) buffers, one product per
// transpose case. Eigen is used only here, so kernel headers stay free of it.
#include "kernels/cpu/gemm.h"

// GCC 12 with -march=native reports a false -Wmaybe-uninitialized inside Eigen's AVX-512
// packing code (an intrinsic header, so -isystem does not hide it); silence it for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Core>

namespace moe::cpu {

namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ConstMap = Eigen::Map<const RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename T>
using MutMap = Eigen::Map<RowMajor<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

// c = alpha * A B + beta * c for any Eigen expressions A[M,K], B[K,N].
template <typename T, typename A, typename B>
void product_into(MutMap<T>& c, const A& op_a, const B& op_b, T alpha, T beta) {
  if (beta == T(0)) {
    c.noalias() = alpha * (op_a * op_b);  // never reads c, so poisoned outputs cannot leak in
  } else {
    if (beta != T(1)) c *= beta;
    c.noalias() += alpha * (op_a * op_b);
  }
}

}  // namespace

template <typename T>
void gemm_strided(const T* a, int64_t lda, bool trans_a, const T* b, int64_t ldb, bool trans_b, T* c, int64_t ldc,
                  int64_t m, int64_t n, int64_t k, T alpha, T beta) {
  if (m == 0 || n == 0) return;
  MutMap<T> cm(c, m, n, Eigen::OuterStride<>(ldc));
  if (k == 0) {
    if (beta == T(0)) {
      cm.setZero();
    } else {
      cm *= beta;
    }
    return;
  }
  // Stored shapes: a is [M,K] or [K,M]; b is [K,N] or [N,K].
  ConstMap<T> am(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  ConstMap<T> bm(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  if (!trans_a && !trans_b) product_into<T>(cm, am, bm, alpha, beta);
  if (!trans_a && trans_b) product_into<T>(cm, am, bm.transpose(), alpha, beta);
  if (trans_a && !trans_b) product_into<T>(cm, am.transpose(), bm, alpha, beta);
  if (trans_a && trans_b) product_into<T>(cm, am.transpose(), bm.transpose(), alpha, beta);
}

template <typename T>
void gemm(const T* a, bool trans_a, const T* b, bool trans_b, T* c, int64_t m, int64_t n, int64_t k, T alpha, T beta) {
  gemm_strided(a, trans_a ? m : k, trans_a, b, trans_b ? k : n, trans_b, c, n, m, n, k, alpha, beta);
}

template void gemm<float>(const float*, bool, const float*, bool, float*, int64_t, int64_t, int64_t, float, float);
template void gemm<double>(const double*, bool, const double*, bool, double*, int64_t, int64_t, int64_t, double,
                           double);
template void gemm_strided<float>(const float*, int64_t, bool, const float*, int64_t, bool, float*, int64_t, int64_t,
                                  int64_t, int64_t, float, float);
template void gemm_strided<double>(const double*, int64_t, bool, const double*, int64_t, bool, double*, int64_t,
                                   int64_t, int64_t, int64_t, double, double);

}  // namespace moe::cpu
