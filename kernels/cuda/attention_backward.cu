// GQA attention backward: the public entry point (flash kernels for head dims 64 and 128) and the
// fp32 fallback (FlashAttention-2 recurrences, recomputing P from lse): delta = rowsum(dout * out);
// a dq kernel per query tile; a dk/dv kernel per key tile that loops over the query heads of its
// kv group, so nothing is accumulated atomically.
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/flash_attention.h"

namespace moe::cuda {

namespace attn {

namespace {

// delta[B,Hq,S] = sum_d dout * out per (b, i, h); one warp per (token, head).
__global__ void attention_delta_kernel(const bf16* out, const bf16* dout, float* delta, int64_t rows, Geometry g) {
  const int lane = threadIdx.x % k_warp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / k_warp) + threadIdx.x / k_warp;
  if (w >= rows) return;  // rows = B*S*Hq, w = (b*S + i)*Hq + h
  const int h = static_cast<int>(w % g.num_heads);
  const int64_t token = w / g.num_heads;
  const int b = static_cast<int>(token / g.seq_len), i = static_cast<int>(token % g.seq_len);
  const int64_t base = token * g.num_heads * g.head_dim + static_cast<int64_t>(h) * g.head_dim;
  float acc = 0;
  for (int d = lane; d < g.head_dim; d += k_warp) acc += __bfloat162float(dout[base + d]) * __bfloat162float(out[base + d]);
  acc = warp_sum(acc);
  if (lane == 0) delta[g.stat_index(b, h, i)] = acc;
}

// dq for a tile of 32 query rows of head h: dq_i = scale * sum_j dS_ij k_j with
// dS_ij = P_ij (dout_i . v_j - delta_i), P_ij = exp(scale q_i.k_j - lse_i). grid (ceil(S/32), Hq, B).
// Shared: qs, dos [32][hd] (broadcast reads), ks, vs [32][hd+1] (lane = key).
template <int kPerLane>
__global__ void __launch_bounds__(k_threads) attention_dq_kernel(const bf16* q, const bf16* k, const bf16* v,
                                                                 const bf16* dout, const float* lse,
                                                                 const float* delta, bf16* dq, Geometry g) {
  extern __shared__ float smem[];
  constexpr int R = k_rows_per_warp;
  const int hd = g.head_dim, pad = hd + 1;
  float* qs = smem;
  float* dos = qs + k_tile * hd;
  float* ks = dos + k_tile * hd;
  float* vs = ks + k_tile * pad;
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int q0 = blockIdx.x * k_tile, h = blockIdx.y, b = blockIdx.z, hk = h / g.group;

  load_tile(qs, hd, q, g.num_heads, h, g, g.seq_len, b, q0, 1.0f);
  load_tile(dos, hd, dout, g.num_heads, h, g, g.seq_len, b, q0, 1.0f);
  float row_lse[R], row_delta[R], acc[R][kPerLane];
  int lo[R];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int i = q0 + warp * R + rr;
    row_lse[rr] = i < g.seq_len ? lse[g.stat_index(b, h, i)] : 0.0f;
    row_delta[rr] = i < g.seq_len ? delta[g.stat_index(b, h, i)] : 0.0f;
    lo[rr] = g.doc_start(b, i);
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[rr][c] = 0.0f;
  }
  const int key_end = g.causal ? min(q0 + k_tile, g.seq_len) : g.kv_len;
  const int key_begin = g.doc_start(b, q0) / k_tile * k_tile;  // document masking: none before it
  for (int k0 = key_begin; k0 < key_end; k0 += k_tile) {
    __syncthreads();
    load_tile(ks, pad, k, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
    load_tile(vs, pad, v, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
    __syncthreads();
    float s[R] = {}, dp[R] = {};
    for (int d = 0; d < hd; ++d) {
      const float kd = ks[lane * pad + d], vd = vs[lane * pad + d];
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        s[rr] += qs[(warp * R + rr) * hd + d] * kd;
        dp[rr] += dos[(warp * R + rr) * hd + d] * vd;
      }
    }
    float ds[R];
#pragma unroll
    for (int rr = 0; rr < R; ++rr) {
      const int i = q0 + warp * R + rr;
      const bool visible = g.visible(i, k0 + lane, lo[rr]);
      const float p = visible ? __expf(s[rr] * g.scale - row_lse[rr]) : 0.0f;
      ds[rr] = p * (dp[rr] - row_delta[rr]);
    }
    for (int j = 0; j < k_tile; ++j) {
      float kj[kPerLane];
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int d = lane + c * k_warp;
        kj[c] = d < hd ? ks[j * pad + d] : 0.0f;
      }
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const float dsj = __shfl_sync(k_full_mask, ds[rr], j);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) acc[rr][c] += dsj * kj[c];
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int i = q0 + warp * R + rr;
    if (i >= g.seq_len) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * k_warp;
      if (d < hd) dq[g.q_index(b, i, h, d)] = __float2bfloat16_rn(acc[rr][c] * g.scale);
    }
  }
}

// dk, dv for a tile of 32 keys of kv head hk, summed over the group's query heads and every
// visible query i: dv_j = sum P_ij dout_i, dk_j = scale * sum dS_ij q_i. grid (ceil(Skv/32), Hkv, B).
// Shared: ks, vs [32][hd] (broadcast reads), qs, dos [32][hd+1] (lane = query), lse_s, delta_s [32].
template <int kPerLane>
__global__ void __launch_bounds__(k_threads) attention_dkdv_kernel(const bf16* q, const bf16* k, const bf16* v,
                                                                   const bf16* dout, const float* lse,
                                                                   const float* delta, bf16* dk, bf16* dv,
                                                                   Geometry g) {
  extern __shared__ float smem[];
  constexpr int R = k_rows_per_warp;
  const int hd = g.head_dim, pad = hd + 1;
  float* ks = smem;
  float* vs = ks + k_tile * hd;
  float* qs = vs + k_tile * hd;
  float* dos = qs + k_tile * pad;
  float* lse_s = dos + k_tile * pad;
  float* delta_s = lse_s + k_tile;
  const int lane = threadIdx.x % k_warp, warp = threadIdx.x / k_warp;
  const int k0 = blockIdx.x * k_tile, hk = blockIdx.y, b = blockIdx.z;

  load_tile(ks, hd, k, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
  load_tile(vs, hd, v, g.num_kv_heads, hk, g, g.kv_len, b, k0, 1.0f);
  float dk_acc[R][kPerLane], dv_acc[R][kPerLane];
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) dk_acc[rr][c] = dv_acc[rr][c] = 0.0f;
  }
  for (int h = hk * g.group; h < (hk + 1) * g.group; ++h) {
    // Causal: queries before k0 see none of these keys. Document masking: a query tile whose first
    // row's document starts after the last key sees none of them, and nor does any later tile.
    for (int q0 = g.causal ? k0 : 0; q0 < g.seq_len && g.doc_start(b, q0) < k0 + k_tile; q0 += k_tile) {
      __syncthreads();
      load_tile(qs, pad, q, g.num_heads, h, g, g.seq_len, b, q0, 1.0f);
      load_tile(dos, pad, dout, g.num_heads, h, g, g.seq_len, b, q0, 1.0f);
      if (threadIdx.x < k_tile) {
        const int i = q0 + threadIdx.x;
        lse_s[threadIdx.x] = i < g.seq_len ? lse[g.stat_index(b, h, i)] : 0.0f;
        delta_s[threadIdx.x] = i < g.seq_len ? delta[g.stat_index(b, h, i)] : 0.0f;
      }
      __syncthreads();
      // Lane = query i = q0 + lane; the warp's keys are rows warp*R + rr of ks/vs.
      float s[R] = {}, dp[R] = {};
      for (int d = 0; d < hd; ++d) {
        const float qd = qs[lane * pad + d], dod = dos[lane * pad + d];
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
          s[rr] += qd * ks[(warp * R + rr) * hd + d];
          dp[rr] += dod * vs[(warp * R + rr) * hd + d];
        }
      }
      const int i = q0 + lane, lo = g.doc_start(b, i);
      float p[R], ds[R];
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const int j = k0 + warp * R + rr;
        const bool visible = g.visible(i, j, lo);
        p[rr] = visible ? __expf(s[rr] * g.scale - lse_s[lane]) : 0.0f;
        ds[rr] = p[rr] * (dp[rr] - delta_s[lane]);
      }
      for (int ii = 0; ii < k_tile; ++ii) {
        float qi[kPerLane], doi[kPerLane];
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) {
          const int d = lane + c * k_warp;
          qi[c] = d < hd ? qs[ii * pad + d] : 0.0f;
          doi[c] = d < hd ? dos[ii * pad + d] : 0.0f;
        }
#pragma unroll
        for (int rr = 0; rr < R; ++rr) {
          const float pi = __shfl_sync(k_full_mask, p[rr], ii);
          const float dsi = __shfl_sync(k_full_mask, ds[rr], ii);
#pragma unroll
          for (int c = 0; c < kPerLane; ++c) {
            dv_acc[rr][c] += pi * doi[c];
            dk_acc[rr][c] += dsi * qi[c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < R; ++rr) {
    const int j = k0 + warp * R + rr;
    if (j >= g.kv_len) continue;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + c * k_warp;
      if (d < hd) {
        dk[g.kv_index(b, j, hk, d)] = __float2bfloat16_rn(dk_acc[rr][c] * g.scale);
        dv[g.kv_index(b, j, hk, d)] = __float2bfloat16_rn(dv_acc[rr][c]);
      }
    }
  }
}

template <int kPerLane>
void launch_backward(const bf16* q, const bf16* k, const bf16* v, const bf16* dout, const float* lse,
                     const float* delta, bf16* dq, bf16* dk, bf16* dv, const Geometry& g, int batch,
                     cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(k_tile) * (4 * g.head_dim + 2 + 2) * sizeof(float);
  const unsigned query_tiles = static_cast<unsigned>(ceil_div(g.seq_len, k_tile));
  const unsigned key_tiles = static_cast<unsigned>(ceil_div(g.kv_len, k_tile));
  allow_shared(attention_dq_kernel<kPerLane>, smem);
  attention_dq_kernel<kPerLane><<<dim3(query_tiles, g.num_heads, batch), k_threads, smem, stream>>>(
      q, k, v, dout, lse, delta, dq, g);
  CUDA_CHECK_LAUNCH();
  allow_shared(attention_dkdv_kernel<kPerLane>, smem);
  attention_dkdv_kernel<kPerLane><<<dim3(key_tiles, g.num_kv_heads, batch), k_threads, smem, stream>>>(
      q, k, v, dout, lse, delta, dk, dv, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

}  // namespace attn

namespace {

// Workspace layout: delta [B, Hq, S] first (padded to 256 bytes), then the flash dQ accumulator.
size_t delta_bytes(const kernels::AttentionShape& dims) {
  const size_t bytes = static_cast<size_t>(dims.batch * dims.num_heads * dims.seq_len) * sizeof(float);
  return (bytes + 255) / 256 * 256;
}

bool flash_head_dim(const kernels::AttentionShape& dims) { return dims.head_dim == 64 || dims.head_dim == 128; }

}  // namespace

size_t attention_backward_workspace_bytes(const kernels::AttentionShape& dims) {
  return delta_bytes(dims) + (flash_head_dim(dims) ? flash_attention_dq_accum_numel(dims) * sizeof(float) : 0);
}

void attention_backward(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                        const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* dout, __nv_bfloat16* dq,
                        __nv_bfloat16* dk, __nv_bfloat16* dv, void* workspace, const kernels::AttentionShape& dims,
                        const int32_t* doc_starts, cudaStream_t stream) {
  const attn::Geometry g = attn::make_geometry(dims, doc_starts);
  if (dims.batch == 0 || dims.seq_len == 0) return;
  MOE_CHECK(workspace != nullptr && aligned_to(workspace, 256), "attention backward: workspace missing or misaligned");
  float* delta = static_cast<float*>(workspace);
  if (flash_head_dim(dims) && flash_attention_supported(dims, {q, k, v, out, dout, dq, dk, dv})) {
    float* dq_accum = reinterpret_cast<float*>(static_cast<char*>(workspace) + delta_bytes(dims));
    return flash_attention_backward(q, k, v, out, lse, dout, dq, dk, dv, delta, dq_accum, dims, doc_starts, stream);
  }
  const int batch = static_cast<int>(dims.batch);
  const int64_t rows = dims.batch * dims.seq_len * dims.num_heads;
  constexpr int delta_warps = 8;
  attn::attention_delta_kernel<<<static_cast<unsigned>(ceil_div(rows, delta_warps)), delta_warps * k_warp, 0,
                                 stream>>>(out, dout, delta, rows, g);
  CUDA_CHECK_LAUNCH();
  switch (attn::per_lane_for(g.head_dim)) {
    case 1: return attn::launch_backward<1>(q, k, v, dout, lse, delta, dq, dk, dv, g, batch, stream);
    case 2: return attn::launch_backward<2>(q, k, v, dout, lse, delta, dq, dk, dv, g, batch, stream);
    case 4: return attn::launch_backward<4>(q, k, v, dout, lse, delta, dq, dk, dv, g, batch, stream);
    default: return attn::launch_backward<8>(q, k, v, dout, lse, delta, dq, dk, dv, g, batch, stream);
  }
}

}  // namespace moe::cuda
