// GQA attention forward: the public entry point (flash kernels for head dims 64 and 128) and the
// fp32 fallback: one block per (query tile of 32 rows, head, batch), K/V tiles of 32 keys in fp32
// shared memory, online softmax per row (lane = key, then lane = dim).
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/flash_attention.h"

namespace moe::cuda {

namespace attn {

namespace {

// q[B*S, Hq*hd], k,v[B*Skv, Hkv*hd] -> out[B*S, Hq*hd], lse[B,Hq,S]. grid (ceil(S/32), Hq, B).
// Shared: qs[32][hd] (pre-scaled), ks[32][hd+1] (padded: lanes read different rows), vs[32][hd].
// Warp w owns query rows q0 + 4w .. q0 + 4w + 3; kPerLane values of the head dim per lane.
template <int kPerLane>
__global__ void __launch_bounds__(k_threads) attention_forward_kernel(const bf16* q, const bf16* k, const bf16* v,
                                                                      bf16* out, float* lse, Geometry g) {
  extern __shared__ float smem[];
  constexpr int R = k_rows_per_warp;
  const int hd = g.head_dim, ks_stride = hd + 1;
  float* qs = smem;
  float* ks = qs + k_tile * hd;
  float* vs = ks + k_tile * ks_stride;
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int q0 = blockIdx.x * k_tile, h = blockIdx.y, b = blockIdx.z, hk = h / g.group;

  load_tile(qs, hd, q, g.num_heads, h, g, g.seq_len, b, q0, g.scale);

  float m[R], l[R], acc[R][kPerLane];
  int lo[R];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
    lo[rr] = g.doc_start(b, q0 + warp * R + rr);
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[rr][c] = 0.0f;
  }
  const int key_end = g.causal ? min(q0 + k_tile, g.seq_len) : g.kv_len;  // causal: none after the last row
  // Document masking: none before the document of the tile's first row (starts grow along a sequence).
  const int key_begin = g.doc_start(b, q0) / k_tile * k_tile;
  for (int k0 = key_begin; k0 < key_end; k0 += k_tile) {
    __syncthreads();  // previous tile fully consumed (and qs loaded on the first pass)
    load_tile(ks, ks_stride, k, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
    load_tile(vs, hd, v, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
    __syncthreads();

    // Scores of this lane's key against the warp's rows.
    float s[R] = {};
    for (int d = 0; d < hd; ++d) {
      const float kd = ks[lane * ks_stride + d];
#pragma unroll
      for (int rr = 0; rr < R; ++rr) s[rr] += qs[(warp * R + rr) * hd + d] * kd;
    }
    // Online softmax update per row; p = this lane's probability numerator.
    float p[R], corr[R];
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
      const int i = q0 + warp * R + rr;
      const bool visible = g.visible(i, k0 + lane, lo[rr]);
      const float sv = visible ? s[rr] : -INFINITY;
      const float tile_max = warp_max(sv);
      if (tile_max == -INFINITY) {  // warp-uniform: nothing visible for this row in this tile
        p[rr] = 0.0f;
        corr[rr] = 1.0f;
        continue;
      }
      const float new_m = fmaxf(m[rr], tile_max);
      p[rr] = visible ? __expf(sv - new_m) : 0.0f;
      corr[rr] = __expf(m[rr] - new_m);  // 0 on the first visible tile (m = -inf)
      l[rr] = l[rr] * corr[rr] + warp_sum(p[rr]);
      m[rr] = new_m;
    }
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[rr][c] *= corr[rr];
    }
    // acc[row][d] += sum_j p_j * v[j][d]; lane = d.
    for (int j = 0; j < k_tile; ++j) {
      float vj[kPerLane];
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int d = lane + c * k_warp;
        vj[c] = d < hd ? vs[j * hd + d] : 0.0f;
      }
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const float pj = __shfl_sync(k_full_mask, p[rr], j);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) acc[rr][c] += pj * vj[c];
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int i = q0 + warp * R + rr;
    if (i >= g.seq_len) continue;
    const float inv_l = 1.0f / l[rr];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * k_warp;
      if (d < hd) out[g.q_index(b, i, h, d)] = __float2bfloat16_rn(acc[rr][c] * inv_l);
    }
    if (lane == 0) lse[g.stat_index(b, h, i)] = m[rr] + logf(l[rr]);
  }
}

template <int kPerLane>
void launch_forward(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, const Geometry& g, int batch,
                    cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(k_tile) * (3 * g.head_dim + 1) * sizeof(float);
  allow_shared(attention_forward_kernel<kPerLane>, smem);
  dim3 grid(static_cast<unsigned>(ceil_div(g.seq_len, k_tile)), static_cast<unsigned>(g.num_heads),
            static_cast<unsigned>(batch));
  attention_forward_kernel<kPerLane><<<grid, k_threads, smem, stream>>>(q, k, v, out, lse, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

}  // namespace attn

void attention_forward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v, __nv_bfloat16* out,
                       float* lse, const kernels::AttentionShape& dims, const int32_t* doc_starts,
                       cudaStream_t stream) {
  const attn::Geometry g = attn::make_geometry(dims, doc_starts);
  if (dims.batch == 0 || dims.seq_len == 0) return;
  if (flash_attention_supported(dims, {q, k, v, out})) {
    return flash_attention_forward(q, k, v, out, lse, dims, doc_starts, stream);
  }
  const int batch = static_cast<int>(dims.batch);
  switch (attn::per_lane_for(g.head_dim)) {
    case 1: return attn::launch_forward<1>(q, k, v, out, lse, g, batch, stream);
    case 2: return attn::launch_forward<2>(q, k, v, out, lse, g, batch, stream);
    case 4: return attn::launch_forward<4>(q, k, v, out, lse, g, batch, stream);
    default: return attn::launch_forward<8>(q, k, v, out, lse, g, batch, stream);
  }
}

}  // namespace moe::cuda
