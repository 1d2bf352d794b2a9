// Embedding lookup/gradient (through the row gather/scatter kernels; own kernels for one shard
// of a vocabulary split over ranks) and the learned position add with its per-position
// gradient sum.
#include "kernels/cuda/embedding.h"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rows.h"

namespace moe::cuda {

using kernels::FloatType;

namespace {

using bf16 = __nv_bfloat16;

// ids[tokens] -> out[tokens, words] in copy words W: table row id - vocab_start for local ids,
// a zero row for ids of other shards in [0, vocab_full), 0xff bytes (NaN) outside the vocabulary.
template <typename W>
__global__ void embedding_shard_forward_kernel(const int32_t* ids, const W* table, W* out, int64_t tokens,
                                               int64_t vocab, int64_t words, int64_t vocab_start,
                                               int64_t vocab_full) {
  const int64_t total = tokens * words;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / words, w = g - t * words;
    const int64_t id = ids[t], r = id - vocab_start;
    W value;
    if (r >= 0 && r < vocab) {
      value = table[r * words + w];
    } else {
      memset(&value, id >= 0 && id < vocab_full ? 0 : 0xff, sizeof(W));
    }
    out[g] = value;
  }
}

template <typename W>
void launch_shard_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t tokens, int64_t vocab,
                          int64_t dim, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream) {
  const int64_t words = dim * static_cast<int64_t>(sizeof(bf16)) / static_cast<int64_t>(sizeof(W));
  constexpr int threads = 256;
  embedding_shard_forward_kernel<W><<<grid_for(tokens * words, threads), threads, 0, stream>>>(
      ids, reinterpret_cast<const W*>(table), reinterpret_cast<W*>(out), tokens, vocab, words, vocab_start,
      vocab_full);
  CUDA_CHECK_LAUNCH();
}

// dtable[r, c] += dout[t, c] for r = ids[t] - vocab_start in [0, vocab); thread per element.
__global__ void embedding_shard_backward_kernel(const int32_t* ids, const bf16* dout, float* dtable, int64_t tokens,
                                                int64_t vocab, int64_t dim, int64_t vocab_start) {
  const int64_t total = tokens * dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / dim, c = g - t * dim;
    const int64_t r = static_cast<int64_t>(ids[t]) - vocab_start;
    if (r < 0 || r >= vocab) continue;
    atomicAdd(dtable + r * dim + c, to_float(dout[g]));
  }
}

void check_shard(int64_t vocab, int64_t vocab_start, int64_t vocab_full) {
  MOE_CHECK(vocab_full == 0 ? vocab_start == 0 : vocab_start >= 0 && vocab_start + vocab <= vocab_full,
            "embedding: vocabulary shard [", vocab_start, ",", vocab_start + vocab, ") of ", vocab_full, " ids");
}

// x[tokens,dim] += pos[p(t)], p(t) = t % seq_len (- doc_starts[t]); N values per thread (8 when
// rows are 16-byte aligned).
template <int N>
__global__ void position_add_forward_kernel(bf16* x, const bf16* pos, int64_t tokens, int64_t dim, int64_t seq_len,
                                            const int32_t* doc_starts) {
  const int64_t per_row = dim / N;
  const int64_t total = tokens * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / per_row, c = (g - t * per_row) * N;
    float xv[N], pv[N];
    load_n<N>(x + t * dim + c, xv);
    const int64_t p = t % seq_len - (doc_starts ? doc_starts[t] : 0);
    load_n<N>(pos + p * dim + c, pv);
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

// Document positions: several tokens of one sequence share a position, so each (token, column)
// adds its value to dpos[t % seq_len - doc_starts[t], c] atomically.
__global__ void position_add_backward_docs_kernel(const bf16* dx, float* dpos, int64_t tokens, int64_t dim,
                                                  int64_t seq_len, const int32_t* doc_starts) {
  const int64_t total = tokens * dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total; g += stride) {
    const int64_t t = g / dim, c = g - t * dim;
    atomicAdd(dpos + (t % seq_len - doc_starts[t]) * dim + c, to_float(dx[g]));
  }
}

}  // namespace

void embedding_forward(const int32_t* ids, const bf16* table, bf16* out, int64_t tokens, int64_t vocab, int64_t dim,
                       int64_t vocab_start, int64_t vocab_full, cudaStream_t stream) {
  check_shard(vocab, vocab_start, vocab_full);
  if (vocab_full == 0) {
    gather_rows(table, vocab, ids, tokens, dim * static_cast<int64_t>(sizeof(bf16)), out, stream);
    return;
  }
  if (tokens == 0 || dim == 0) return;
  if (dim % 8 == 0 && aligned_to(table, 16) && aligned_to(out, 16)) {
    launch_shard_forward<uint4>(ids, table, out, tokens, vocab, dim, vocab_start, vocab_full, stream);
  } else if (dim % 2 == 0 && aligned_to(table, 4) && aligned_to(out, 4)) {
    launch_shard_forward<uint32_t>(ids, table, out, tokens, vocab, dim, vocab_start, vocab_full, stream);
  } else {
    launch_shard_forward<uint16_t>(ids, table, out, tokens, vocab, dim, vocab_start, vocab_full, stream);
  }
}

void embedding_backward(const int32_t* ids, const bf16* dout, float* dtable, int64_t tokens, int64_t vocab,
                        int64_t dim, int64_t vocab_start, int64_t vocab_full, cudaStream_t stream) {
  check_shard(vocab, vocab_start, vocab_full);
  if (vocab_full == 0) {
    scatter_add_rows(dout, FloatType::bf16, ids, tokens, dim, dtable, FloatType::f32, vocab, stream);
    return;
  }
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  embedding_shard_backward_kernel<<<grid_for(tokens * dim, threads), threads, 0, stream>>>(ids, dout, dtable, tokens,
                                                                                          vocab, dim, vocab_start);
  CUDA_CHECK_LAUNCH();
}

void position_add_forward(bf16* x, const bf16* pos, int64_t tokens, int64_t dim, int64_t seq_len,
                          const int32_t* doc_starts, cudaStream_t stream) {
  MOE_CHECK(seq_len > 0 && tokens % seq_len == 0, "position_add_forward: ", tokens, " rows, seq_len ", seq_len);
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  if (dim % 8 == 0 && aligned_to(x, 16) && aligned_to(pos, 16)) {
    position_add_forward_kernel<8><<<grid_for(tokens * dim / 8, threads), threads, 0, stream>>>(x, pos, tokens, dim,
                                                                                                seq_len, doc_starts);
  } else {
    position_add_forward_kernel<1><<<grid_for(tokens * dim, threads), threads, 0, stream>>>(x, pos, tokens, dim,
                                                                                            seq_len, doc_starts);
  }
  CUDA_CHECK_LAUNCH();
}

void position_add_backward(const bf16* dx, float* dpos, int64_t tokens, int64_t dim, int64_t seq_len,
                           const int32_t* doc_starts, cudaStream_t stream) {
  MOE_CHECK(seq_len > 0 && tokens % seq_len == 0, "position_add_backward: ", tokens, " rows, seq_len ", seq_len);
  if (tokens == 0 || dim == 0) return;
  constexpr int threads = 256;
  if (doc_starts) {
    position_add_backward_docs_kernel<<<grid_for(tokens * dim, threads), threads, 0, stream>>>(dx, dpos, tokens, dim,
                                                                                              seq_len, doc_starts);
    CUDA_CHECK_LAUNCH();
    return;
  }
  position_add_backward_kernel<<<grid_for(seq_len * dim, threads), threads, 0, stream>>>(dx, dpos, tokens, dim,
                                                                                         seq_len);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moe::cuda
