// Norm kernels. Forward: one warp per row. Backward: a team of threads per row on a fixed grid,
// the parameter gradients summed per block as dx is computed, then the block partials added in a
// fixed order (deterministic, no atomics). Rows are re-read from L1/L2 between passes (no
// shared-memory row cache).
#include "kernels/cuda/norms.h"

#include <algorithm>
#include <climits>
#include <initializer_list>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/device_info.h"

namespace moe::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int k_warps = 8;                 // forward: rows per block
constexpr int k_block = 512;               // backward: threads per block (at most)
constexpr int k_sm_threads = 2 * k_block;  // backward: threads resident per SM (its __launch_bounds__)
constexpr int k_finish_lanes = 16;         // param_grad_kernel: block partials summed side by side

// Lane's columns: c = lane*N, lane*N + 32*N, ... (N = 8 when every row is 16-byte aligned).
#define MOE_ROW_LOOP(c) for (int c = lane * N; c < dim; c += k_warp * N)

// The first pass over a row: the norm's input in floats. With the fused residual add (Add) that
// is h = x + delta, rounded to bf16 exactly as it is stored to h (later passes re-read h).
template <int N, bool Add>
__device__ __forceinline__ void load_input(const bf16* x, const bf16* delta, bf16* h, int64_t off, float* v) {
  load_n<N>(x + off, v);
  if constexpr (Add) {
    float d[N];
    load_n<N>(delta + off, d);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = __bfloat162float(__float2bfloat16_rn(v[i] + d[i]));
    store_n<N>(h + off, v);
  }
}

// The last pass of a backward: dx = g (+ dresidual, added in fp32 before the one rounding).
template <int N, bool Residual>
__device__ __forceinline__ void store_dx(const bf16* dresidual, bf16* dx, int64_t off, float* g) {
  if constexpr (Residual) {
    float r[N];
    load_n<N>(dresidual + off, r);
#pragma unroll
    for (int i = 0; i < N; ++i) g[i] += r[i];
  }
  store_n<N>(dx + off, g);
}

// x[rows,dim] (+ delta -> h), w[dim] -> y[rows,dim], rstd[rows]
template <int N, bool Add>
__global__ void rmsnorm_forward_kernel(const bf16* x, const bf16* delta, bf16* h, const bf16* w, bf16* y,
                                       float* rstd, int64_t rows, int dim, float eps) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  float ss = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_input<N, Add>(x, delta, h, row * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) ss += v[i] * v[i];
  }
  const float rs = rsqrtf(warp_sum(ss) / dim + eps);
  if (lane == 0) rstd[row] = rs;
  const bf16* xr = (Add ? h : x) + row * dim;
  MOE_ROW_LOOP(c) {
    float v[N], wv[N];
    load_n<N>(xr + c, v);
    load_n<N>(w + c, wv);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = v[i] * rs * wv[i];
    store_n<N>(y + row * dim + c, v);
  }
}

// x[rows,dim] (+ delta -> h), w, b -> y, mean[rows], rstd[rows]; two-pass variance
template <int N, bool Add>
__global__ void layernorm_forward_kernel(const bf16* x, const bf16* delta, bf16* h, const bf16* w, const bf16* b,
                                         bf16* y, float* mean, float* rstd, int64_t rows, int dim, float eps) {
  const int lane = threadIdx.x % k_warp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * k_warps + threadIdx.x / k_warp;
  if (row >= rows) return;
  float s = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_input<N, Add>(x, delta, h, row * dim + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) s += v[i];
  }
  const float mu = warp_sum(s) / dim;
  const bf16* xr = (Add ? h : x) + row * dim;
  float var = 0;
  MOE_ROW_LOOP(c) {
    float v[N];
    load_n<N>(xr + c, v);
#pragma unroll
    for (int i = 0; i < N; ++i) var += (v[i] - mu) * (v[i] - mu);
  }
  const float rs = rsqrtf(warp_sum(var) / dim + eps);
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  MOE_ROW_LOOP(c) {
    float v[N], wv[N], bv[N];
    load_n<N>(xr + c, v);
    load_n<N>(w + c, wv);
    load_n<N>(b + c, bv);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = (v[i] - mu) * rs * wv[i] + bv[i];
    store_n<N>(y + row * dim + c, v);
  }
}

// A thread's place in a backward block (BackwardGrid): the block is `teams` teams of `size`
// threads (a multiple of 32); round by round each team normalises one row, of which the block
// handles the size * N columns of slice blockIdx.x (the whole row when it fits). Thread `rank` of
// a team owns the N columns from `col` in every row the block takes.
struct TeamPlace {
  int team, size, rank, col;
};

template <int N>
__device__ __forceinline__ TeamPlace team_place(int teams) {
  const int size = static_cast<int>(blockDim.x) / teams, t = static_cast<int>(threadIdx.x);
  return {t / size, size, t % size, (static_cast<int>(blockIdx.x) * size + t % size) * N};
}

// The block's rounds: in each, team t takes row first + t (past the end for some teams in the last
// round; every thread still runs every round, for team_sum's barrier).
#define MOE_ROUND_LOOP(first, round)                                                      \
  for (int64_t first = static_cast<int64_t>(blockIdx.y) * teams, round = 0; first < rows; \
       first += static_cast<int64_t>(gridDim.y) * teams, ++round)

// The thread's columns of the whole row (every slice), in column order: each slice's block gets the
// same row sums, bit for bit.
#define MOE_TEAM_LOOP(c) for (int c = at.rank * N; c < dim; c += at.size * N)

// v[S] summed over each team's threads, returned to all of them (lanes, then the team's warps in
// order). Every thread of the block calls it once a round: one barrier. `red` holds
// 2 * (blockDim.x / 32) * S floats, used by round parity so a round's writes never meet the
// previous round's reads.
template <int S>
__device__ __forceinline__ void team_sum(float (&v)[S], int64_t round, const TeamPlace& at, float* red) {
  const int warp = static_cast<int>(threadIdx.x) / k_warp, warps = static_cast<int>(blockDim.x) / k_warp;
  float* buf = red + (round & 1) * warps * S;
#pragma unroll
  for (int s = 0; s < S; ++s) v[s] = warp_sum(v[s]);
  if (threadIdx.x % k_warp == 0) {
#pragma unroll
    for (int s = 0; s < S; ++s) buf[warp * S + s] = v[s];
  }
  __syncthreads();
  const int lead = at.team * (at.size / k_warp);  // the team's first warp
#pragma unroll
  for (int s = 0; s < S; ++s) {
    v[s] = 0;
    for (int i = 0; i < at.size / k_warp; ++i) v[s] += buf[(lead + i) * S + s];
  }
}

// A backward block's dynamic shared memory: team_sum's 2 * warps * P floats (P row sums a round),
// then store_partials' stage.
template <int P>
__device__ __forceinline__ float* partial_stage(float* shared) {
  return shared + 2 * P * (blockDim.x / k_warp);
}

// The block's parameter-gradient partials: the teams' acc[P][N] summed in team order into
// partial[blockIdx.y, q * dim + c] for the columns c of this slice (partial: f32 [gridDim.y,
// P * dim]). `stage` holds P * blockDim.x * N floats.
template <int N, int P>
__device__ __forceinline__ void store_partials(const float (&acc)[P][N], const TeamPlace& at, int teams, int dim,
                                               float* stage, float* partial) {
  const int width = at.size * N, slice = static_cast<int>(blockIdx.x) * width;
#pragma unroll
  for (int q = 0; q < P; ++q) {
#pragma unroll
    for (int i = 0; i < N; ++i) stage[(at.team * P + q) * width + at.rank * N + i] = acc[q][i];
  }
  __syncthreads();
  float* out = partial + static_cast<int64_t>(blockIdx.y) * P * dim + slice;
  for (int k = static_cast<int>(threadIdx.x); k < P * width; k += static_cast<int>(blockDim.x)) {
    const int q = k / width, j = k % width;
    if (slice + j >= dim) continue;
    float s = 0;
    for (int t = 0; t < teams; ++t) s += stage[(t * P + q) * width + j];
    out[static_cast<int64_t>(q) * dim + j] = s;
  }
}

// dx = rstd * (g - xhat * mean(g * xhat)) (+ dresidual), g = dy * w, xhat = x * rstd, for x, dy,
// dresidual, dx [rows,dim], w [dim], rstd [rows]; and partial[blockIdx.y, c] = sum of dy * xhat
// over the block's rows (f32 [gridDim.y, dim], c in slice blockIdx.x; param_grad_kernel adds
// them into dw). Launched on a BackwardGrid with params = 1.
template <int N, bool Residual>
__global__ void __launch_bounds__(k_block, k_sm_threads / k_block)
    rmsnorm_backward_kernel(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* dresidual,
                            bf16* dx, float* partial, int64_t rows, int dim, int teams) {
  extern __shared__ float shared[];  // team_sum's buffers, then store_partials' stage
  const TeamPlace at = team_place<N>(teams);
  const bool owner = at.col < dim;
  float wv[N], acc[1][N] = {};
  if (owner) load_n<N>(w + at.col, wv);
  MOE_ROUND_LOOP(first, round) {
    const int64_t row = first + at.team;
    const bool live = row < rows;
    const float rs = live ? rstd[row] : 0.0f;
    float dot[1] = {0.0f};
    if (live) {
      MOE_TEAM_LOOP(c) {
        float xv[N], gv[N], wc[N];
        load_n<N>(x + row * dim + c, xv);
        load_n<N>(dy + row * dim + c, gv);
        load_n<N>(w + c, wc);
#pragma unroll
        for (int i = 0; i < N; ++i) dot[0] += gv[i] * wc[i] * xv[i] * rs;
      }
    }
    team_sum(dot, round, at, shared);
    if (!live || !owner) continue;
    const int64_t off = row * dim + at.col;
    const float mean_dot = dot[0] / dim;
    float xv[N], gv[N];
    load_n<N>(x + off, xv);
    load_n<N>(dy + off, gv);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      acc[0][i] += gv[i] * xv[i] * rs;
      xv[i] = rs * (gv[i] * wv[i] - xv[i] * rs * mean_dot);
    }
    store_dx<N, Residual>(dresidual, dx, off, xv);
  }
  store_partials<N>(acc, at, teams, dim, partial_stage<1>(shared), partial);
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dresidual), g = dy * w, xhat = (x - mean)
// * rstd, for x, dy, dresidual, dx [rows,dim], w [dim], mean and rstd [rows]; and the block's
// partials (f32 [gridDim.y, 2 * dim], c in slice blockIdx.x): partial[blockIdx.y, c] = sum of
// dy * xhat (dw), partial[blockIdx.y, dim + c] = sum of dy (db) over the block's rows
// (param_grad_kernel adds them into dw, db). Launched on a BackwardGrid with params = 2.
template <int N, bool Residual>
__global__ void __launch_bounds__(k_block, k_sm_threads / k_block)
    layernorm_backward_kernel(const bf16* x, const bf16* w, const float* mean, const float* rstd, const bf16* dy,
                              const bf16* dresidual, bf16* dx, float* partial, int64_t rows, int dim, int teams) {
  extern __shared__ float shared[];  // team_sum's buffers, then store_partials' stage
  const TeamPlace at = team_place<N>(teams);
  const bool owner = at.col < dim;
  float wv[N], acc[2][N] = {};
  if (owner) load_n<N>(w + at.col, wv);
  MOE_ROUND_LOOP(first, round) {
    const int64_t row = first + at.team;
    const bool live = row < rows;
    const float mu = live ? mean[row] : 0.0f, rs = live ? rstd[row] : 0.0f;
    float sums[2] = {0.0f, 0.0f};  // of g and of g * xhat
    if (live) {
      MOE_TEAM_LOOP(c) {
        float xv[N], gv[N], wc[N];
        load_n<N>(x + row * dim + c, xv);
        load_n<N>(dy + row * dim + c, gv);
        load_n<N>(w + c, wc);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float g = gv[i] * wc[i];
          sums[0] += g;
          sums[1] += g * (xv[i] - mu) * rs;
        }
      }
    }
    team_sum(sums, round, at, shared);
    if (!live || !owner) continue;
    const int64_t off = row * dim + at.col;
    const float mean_g = sums[0] / dim, mean_gx = sums[1] / dim;
    float xv[N], gv[N];
    load_n<N>(x + off, xv);
    load_n<N>(dy + off, gv);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float xhat = (xv[i] - mu) * rs;
      acc[0][i] += gv[i] * xhat;
      acc[1][i] += gv[i];
      xv[i] = rs * (gv[i] * wv[i] - mean_g - xhat * mean_gx);
    }
    store_dx<N, Residual>(dresidual, dx, off, xv);
  }
  store_partials<N>(acc, at, teams, dim, partial_stage<2>(shared), partial);
}

// dw[c] += sum over b of partial[b, c]; db[c] += sum over b of partial[b, dim + c] when db is set
// (partial: f32 [blocks, width], width = dim or 2 * dim). Block: 32 columns x k_finish_lanes
// lanes; lane y sums rows y, y + k_finish_lanes, ..., then the lanes are added in order.
__global__ void param_grad_kernel(const float* partial, int64_t blocks, int64_t width, int64_t dim, float* dw,
                                  float* db) {
  __shared__ float tile[k_finish_lanes][k_warp + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * k_warp + threadIdx.x;
  float s = 0;
  if (c < width) {
    for (int64_t b = threadIdx.y; b < blocks; b += k_finish_lanes) s += partial[b * width + c];
  }
  tile[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y != 0 || c >= width) return;
  for (int y = 1; y < k_finish_lanes; ++y) s += tile[y][threadIdx.x];
  if (c < dim) {
    dw[c] += s;
  } else {
    db[c - dim] += s;
  }
}

#undef MOE_TEAM_LOOP
#undef MOE_ROUND_LOOP
#undef MOE_ROW_LOOP

// The 8-wide path needs every row start 16-byte aligned: aligned bases and dim % 8 == 0.
bool vec_ok(int64_t dim, std::initializer_list<const void*> ptrs) {
  if (dim % 8 != 0) return false;
  for (const void* p : ptrs) {
    if (p && !aligned_to(p, 16)) return false;
  }
  return true;
}

void check_sizes(int64_t rows, int64_t dim, const char* what) {
  MOE_CHECK(rows >= 0 && dim > 0 && dim <= INT_MAX && ceil_div(rows, k_warps) <= INT_MAX, what, ": bad shape [",
            rows, ",", dim, "]");
}

// The backward: a team's column steps (int) stay clear of overflow. (dx may alias dresidual only:
// a row cut into column slices has one block write dx[row, slice 1] while another still reads x
// and dy of that row for the row sums; the ops layer refuses the overlap.)
void check_backward(int64_t rows, int64_t dim, const char* what) {
  check_sizes(rows, dim, what);
  MOE_CHECK(dim <= INT_MAX - 8 * k_block, what, ": rows of ", dim, " columns are too wide");
}

// A kernel launch: grid, block, dynamic shared memory.
struct NormLaunch {
  dim3 grid, block;
  size_t smem;
};

// The forward's launch: one warp per row, k_warps rows a block.
NormLaunch row_launch(int64_t rows) {
  return {dim3(static_cast<unsigned>(ceil_div(rows, k_warps))), dim3(k_warps * k_warp), 0};
}

// The backward's launch (the kernels' TeamPlace), a function of the shape, the vector path (the
// pointers' alignment) and the device's multiprocessor count only, so results repeat bit for bit
// for those: a team has a thread for each N columns of the row, rounded up to whole warps, at most
// k_block (wider rows are cut into slices of team * N columns, along grid x); a block has as many
// teams as fit in k_block threads; blocks along grid y: one resident wave (each takes an equal
// share of the rounds), fewer when the rows run out. `params`: the parameter gradients (1: dw; 2:
// dw and db), which sizes the shared memory (partial_stage).
struct BackwardGrid {
  NormLaunch launch;
  int teams;
  int64_t blocks() const { return launch.grid.y; }
};

BackwardGrid backward_grid(int64_t rows, int64_t dim, int n, int params) {
  const int64_t chunks = ceil_div(dim, n);
  const int team = static_cast<int>(std::min<int64_t>(k_block, ceil_div(chunks, k_warp) * k_warp));
  const int teams = k_block / team, threads = teams * team;
  const int64_t slices = ceil_div(chunks, team);
  const int64_t wave = std::max<int64_t>(multiprocessor_count() * (k_sm_threads / threads) / slices, 1);
  const int64_t blocks = std::min(ceil_div(rows, teams), wave);
  const size_t smem = sizeof(float) * static_cast<size_t>(params * (2 * threads / k_warp + threads * n));
  return {{dim3(static_cast<unsigned>(slices), static_cast<unsigned>(blocks)), dim3(threads), smem}, teams};
}

// dw (and db when set) += the column sums of a backward's partials [blocks, dim (or 2 * dim)].
void add_param_grads(const float* partial, int64_t blocks, int64_t dim, float* dw, float* db, cudaStream_t stream) {
  const int64_t width = db ? 2 * dim : dim;
  const dim3 grid(static_cast<unsigned>(ceil_div(width, k_warp))), block(k_warp, k_finish_lanes);
  param_grad_kernel<<<grid, block, 0, stream>>>(partial, blocks, width, dim, dw, db);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// One launch of `kernel<N, Flag>` on `launch` (a NormLaunch): N = 8 when every pointer allows
// 16-byte access, Flag = the fused residual (add in forward, dresidual in backward) when its
// pointer is set.
#define MOE_LAUNCH_NORM(kernel, launch, vec, flag, ...)                                        \
  do {                                                                                         \
    const NormLaunch l = (launch);                                                             \
    if ((vec) && (flag)) kernel<8, true><<<l.grid, l.block, l.smem, stream>>>(__VA_ARGS__);    \
    if ((vec) && !(flag)) kernel<8, false><<<l.grid, l.block, l.smem, stream>>>(__VA_ARGS__);  \
    if (!(vec) && (flag)) kernel<1, true><<<l.grid, l.block, l.smem, stream>>>(__VA_ARGS__);   \
    if (!(vec) && !(flag)) kernel<1, false><<<l.grid, l.block, l.smem, stream>>>(__VA_ARGS__); \
    CUDA_CHECK_LAUNCH();                                                                       \
  } while (0)

void rmsnorm_forward(const bf16* x, const bf16* delta, bf16* h, const bf16* w, bf16* y, float* rstd, int64_t rows,
                     int64_t dim, float eps, cudaStream_t stream) {
  check_sizes(rows, dim, "rmsnorm_forward");
  MOE_CHECK((delta == nullptr) == (h == nullptr), "rmsnorm_forward: delta and h go together");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, delta, h, w, y});
  MOE_LAUNCH_NORM(rmsnorm_forward_kernel, row_launch(rows), vec, delta != nullptr, x, delta, h, w, y, rstd, rows, d,
                  eps);
}

void rmsnorm_backward(const bf16* x, const bf16* w, const float* rstd, const bf16* dy, const bf16* dresidual, bf16* dx,
                      float* dw, int64_t rows, int64_t dim, cudaStream_t stream) {
  check_backward(rows, dim, "rmsnorm_backward");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, w, dy, dresidual, dx});
  const BackwardGrid g = backward_grid(rows, dim, vec ? 8 : 1, 1);
  Scratch partial(static_cast<size_t>(g.blocks() * dim) * sizeof(float), stream);
  MOE_LAUNCH_NORM(rmsnorm_backward_kernel, g.launch, vec, dresidual != nullptr, x, w, rstd, dy, dresidual, dx,
                  partial.as<float>(), rows, d, g.teams);
  add_param_grads(partial.as<float>(), g.blocks(), dim, dw, nullptr, stream);
}

void layernorm_forward(const bf16* x, const bf16* delta, bf16* h, const bf16* w, const bf16* b, bf16* y, float* mean,
                       float* rstd, int64_t rows, int64_t dim, float eps, cudaStream_t stream) {
  check_sizes(rows, dim, "layernorm_forward");
  MOE_CHECK((delta == nullptr) == (h == nullptr), "layernorm_forward: delta and h go together");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, delta, h, w, b, y});
  MOE_LAUNCH_NORM(layernorm_forward_kernel, row_launch(rows), vec, delta != nullptr, x, delta, h, w, b, y, mean, rstd,
                  rows, d, eps);
}

void layernorm_backward(const bf16* x, const bf16* w, const float* mean, const float* rstd, const bf16* dy,
                        const bf16* dresidual, bf16* dx, float* dw, float* db, int64_t rows, int64_t dim,
                        cudaStream_t stream) {
  check_backward(rows, dim, "layernorm_backward");
  if (rows == 0) return;
  const int d = static_cast<int>(dim);
  const bool vec = vec_ok(dim, {x, w, dy, dresidual, dx});
  const BackwardGrid g = backward_grid(rows, dim, vec ? 8 : 1, 2);
  Scratch partial(static_cast<size_t>(g.blocks() * 2 * dim) * sizeof(float), stream);
  MOE_LAUNCH_NORM(layernorm_backward_kernel, g.launch, vec, dresidual != nullptr, x, w, mean, rstd, dy, dresidual, dx,
                  partial.as<float>(), rows, d, g.teams);
  add_param_grads(partial.as<float>(), g.blocks(), dim, dw, db, stream);
}

#undef MOE_LAUNCH_NORM

}  // namespace moe::cuda
