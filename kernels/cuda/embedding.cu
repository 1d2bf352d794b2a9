// Embedding lookup/gradient (through the row gather/scatter kernels) and the learned
// position add with its per-position gradient sum.
#include "kernels/cuda/embedding.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rows.h"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;

// x[tokens,dim] += pos[t % seq_len]; N values per thread (8 when rows are 16-byte aligned).
template <int N>
__global__ void position_add_forward_kernel(bf16* x, const bf16* pos, int64_t tokens, int64_t dim, int64_t seq_len) {
  const int64_t per_row = dim / N;
  const int64_t total = tokens * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float xv[N], pv[N];
    load_n<N>(x + t * dim + c, xv);
    load_n<N>(pos + (t % seq_len) * dim + c, pv);
#pragma unroll
    for (int i = 0; i < N; ++i) xv[i] += pv[i];
    store_n<N>(x + t * dim + c, xv);
  }
}

// dpos[s, c] += sum_b dx[b*seq_len + s, c]: thread per (s, c), sequences summed in order.
__global__ void position_add_backward_kernel(const bf16* dx, float* dpos, int64_t tokens, int64_t dim,
                                             int64_t seq_len) {
  const int64_t total = seq_len * dim;
  const int64_t num_seqs = tokens / seq_len;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    float acc = 0;
    for (int64_t b = 0; b < num_seqs; ++b) acc += to_float(dx[b * total + g]);
    dpos[g] += acc;
  }
}

}  // namespace

void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t tokens, int64_t vocab, int64_t dim,
                       cudaStream_t stream) {
  gather_rows(table, vocab, ids, tokens, dim * static_cast<int64_t>(sizeof(bf16)), out, stream);
}

void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t tokens, int64_t vocab,
                        int64_t dim, cudaStream_t stream) {
  scatter_add_rows(dout, FloatType::bf16, ids, tokens, dim, dtable, FloatType::f32, vocab, stream);
}

void position_add_forward(bf16* x, const bf16* pos, int64_t tokens, int64_t dim, int64_t seq_len,
                          cudaStream_t stream) {
  MOE_CHECK(seq_len > 0 && tokens % seq_len == 0, "position_add_forward: ", tokens, " rows, seq_len ", seq_len);
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  if (dim % 8 == 0 && aligned_to(x, 16) && aligned_to(pos, 16)) {
    position_add_forward_kernel<8><<<grid_for(tokens * dim / 8, threads), threads, 0, stream>>>(x, pos, tokens, dim,
                                                                                                seq_len);
  } else {
    position_add_forward_kernel<1><<<grid_for(tokens * dim, threads), threads, 0, stream>>>(x, pos, tokens, dim,
                                                                                            seq_len);
  }
  CUDA_CHECK_LAUNCH();
}

void position_add_backward(const bf16* dx, float* dpos, int64_t tokens, int64_t dim, int64_t seq_len,
                           cudaStream_t stream) {
  MOE_CHECK(seq_len > 0 && tokens % seq_len == 0, "position_add_backward: ", tokens, " rows, seq_len ", seq_len);
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  position_add_backward_kernel<<<grid_for(seq_len * dim, threads), threads, 0, stream>>>(dx, dpos, tokens, dim,
                                                                                         seq_len);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
