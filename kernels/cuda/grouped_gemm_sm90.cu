// The Hopper grouped GEMM: bulk tensor copies into a ring of shared-memory stages, wgmma, and tiles
// scheduled over (expert, row tile, column tile) from the device offsets (the host never waits).
// This file is the host side (tensor maps, launches, the choice of tile); the kernel is in
// grouped_gemm_sm90_kernel.cuh. Choices: docs/decisions.md, "Issue 14, the Hopper grouped GEMM".
#include "kernels/cuda/grouped_gemm_sm90.h"

#include <algorithm>
#include <climits>

#include "kernels/cuda/device_info.h"
#include "kernels/cuda/grouped_gemm_sm90_kernel.cuh"
#include "kernels/cuda/grouped_gemm_sm90_resident.cuh"
#include "src/util/check.h"

namespace moe::cuda::sm90 {

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    MOE_CHECK(found == cudaDriverEntryPointSuccess && p != nullptr,
              "grouped gemm on CUDA: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// A 2-D bf16 tensor map over a row-major [outer, inner] matrix, boxes of [box_outer, 64] with the
// 128-byte swizzle; reads outside the matrix return zeros.
CUtensorMap tensor_map(const void* base, int64_t inner, int64_t outer, int box_outer) {
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner) * 2};
  const cuuint32_t box[2] = {k_box, static_cast<cuuint32_t>(box_outer)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(base), dims,
                                    strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  MOE_CHECK(r == CUDA_SUCCESS, "grouped gemm on CUDA: cuTensorMapEncodeTiled failed (", static_cast<int>(r),
            ") for a [", outer, ", ", inner, "] matrix");
  return map;
}

// Shared memory of a launch: the tile's fixed part and the forward's row-tile schedule or the
// weight gradient's expert order.
template <class T>
int64_t smem_bytes(int64_t num_experts) {
  const int64_t schedule = !T::weight_grad ? 2 * (num_experts + 1) * 4 : T::sorted_experts ? num_experts * 4 : 0;
  return T::fixed_smem_bytes + schedule;
}

// The most rows an expert holds on average for the resident weight gradient (weight_grad_kernel).
constexpr int64_t k_resident_mean_rows = 256;

// The most experts a persistent weight gradient sorts (each block ranks them all: E^2 comparisons).
constexpr int64_t k_max_sorted_experts = 512;

// Whether a launch of T for num_experts fits the shared memory (and the sort).
template <class T>
bool fits(int64_t num_experts) {
  return smem_bytes<T>(num_experts) <= k_max_smem && (!T::sorted_experts || num_experts <= k_max_sorted_experts);
}

// Raise Kernel's dynamic shared-memory limit to k_max_smem, once a device.
template <auto Kernel>
void allow_max_smem() {
  static uint64_t configured_devices = 0;
  if (first_use_on_current_device(configured_devices)) {
    CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, k_max_smem));
  }
}

// map_out: the output the bulk stores write (the forward's y); unused by the weight gradients,
// which write dw themselves.
// `tiles`: the most output tiles the launch may have.
template <class T>
void launch(const CUtensorMap& a, const CUtensorMap& b, const CUtensorMap& out, const Args& args, int64_t tiles,
            cudaStream_t stream) {
  allow_max_smem<grouped_gemm_sm90_kernel<T>>();
  const int64_t smem = smem_bytes<T>(args.shape.num_experts);
  MOE_CHECK(smem <= k_max_smem, "grouped gemm on CUDA: ", args.shape.num_experts,
            " experts overflow the Hopper kernel's shared memory");
  // A block per tile, or one per multiprocessor walking them.
  const int64_t blocks = T::persistent ? std::min<int64_t>(tiles, multiprocessor_count()) : tiles;
  MOE_CHECK(tiles <= INT32_MAX, "grouped gemm on CUDA: ", tiles, " output tiles");
  if (blocks == 0) return;
  grouped_gemm_sm90_kernel<T><<<dim3(static_cast<unsigned>(blocks)), k_threads, static_cast<size_t>(smem), stream>>>(
      a, b, out, args);
  CUDA_CHECK_LAUNCH();
}

// The resident weight gradient (grouped_gemm_sm90_resident.cuh): a persistent block a
// multiprocessor walking the units (expert, 256 columns, up to row_tiles_per_unit row tiles of dw).
void launch_resident(const CUtensorMap& x, const CUtensorMap& dy, const Args& args, cudaStream_t stream) {
  allow_max_smem<grouped_weight_grad_resident_kernel>();
  const int64_t units = ResidentLayout(args.shape).units(args.shape.num_experts);
  MOE_CHECK(units <= INT32_MAX, "grouped gemm on CUDA: ", units, " weight-gradient units");
  const int64_t blocks = std::min<int64_t>(units, multiprocessor_count());
  if (blocks == 0) return;
  grouped_weight_grad_resident_kernel<<<dim3(static_cast<unsigned>(blocks)), k_threads, Resident::smem_bytes, stream>>>(
      x, dy, args);
  CUDA_CHECK_LAUNCH();
}

// The weight gradient's tiles of width bn: (expert, row tile of dw[e], column tile).
int64_t weight_grad_tile_count(const kernels::GroupedGemmShape& s, int bn) {
  return s.num_experts * ceil_div(s.k, k_bm) * ceil_div(s.n, bn);
}

}  // namespace

// The persistent weight gradient's tile width: 256 (a quarter fewer operand loads per output than
// 128) unless n < 256, or its share of useful work is clearly lower than 128's: the share of the
// multiprocessors busy over the rounds of tiles times the share of the tiles' columns inside n
// (MoE-small's down projection: 576 wide tiles fill 4.36 rounds of 132, 1152 narrow ones 8.73;
// n = 384 leaves a quarter of the wide columns empty).
int weight_grad_tile_width(const kernels::GroupedGemmShape& s, int64_t multiprocessors) {
  if (s.n < 256) return 128;
  const int64_t sms = multiprocessors;
  auto useful = [&](int bn) {
    const int64_t tiles = weight_grad_tile_count(s, bn);
    const double busy = static_cast<double>(tiles) / static_cast<double>(ceil_div(tiles, sms) * sms);
    return busy * static_cast<double>(s.n) / static_cast<double>(ceil_div(s.n, bn) * bn);
  };
  return useful(256) + 0.05 >= useful(128) ? 256 : 128;
}

// The persistent tiles sort their experts in shared memory; where the experts overflow it (or
// number over k_max_sorted_experts), they give way to a block per tile. Where the wide tiles are
// chosen and the experts hold at most 256 rows on average (Switch-like), dy stays resident instead:
// most experts then fit one chunk of 320 rows.
WeightGradKernel weight_grad_kernel(const kernels::GroupedGemmShape& s, bool persistent, int64_t multiprocessors) {
  const bool wide = persistent && weight_grad_tile_width(s, multiprocessors) == 256;
  if (wide && s.rows <= k_resident_mean_rows * s.num_experts) return WeightGradKernel::resident;
  if (wide && fits<PersistentTile<Mode::weight_grad, 256>>(s.num_experts)) return WeightGradKernel::wide;
  if (persistent && fits<PersistentTile<Mode::weight_grad, 128>>(s.num_experts)) return WeightGradKernel::narrow;
  return WeightGradKernel::block_per_tile;
}

namespace {

// The forward's tiles: every (row tile, column tile) the offsets may produce.
template <class T>
void launch_forward(const CUtensorMap& a, const CUtensorMap& b, const Args& args, cudaStream_t stream) {
  const kernels::GroupedGemmShape& s = args.shape;
  const CUtensorMap y = tensor_map(args.out, s.n, s.rows, k_bm);
  launch<T>(a, b, y, args, ceil_div(s.n, T::bn) * (ceil_div(s.rows, k_bm) + s.num_experts), stream);
}

// The forward's tile width for n output columns: wide tiles cut the loads of A per FLOP, so 256
// where n is a multiple of it, else 192 where n is (n = 384: a 64 x 384 expert's input gradient),
// else 128 (a block per tile); 128 everywhere without wide_tiles.
int forward_tile_width(int64_t n, bool wide_tiles) {
  if (wide_tiles && n >= 512 && n % 256 == 0) return 256;
  if (wide_tiles && n >= 384 && n % 192 == 0) return 192;
  return 128;
}

template <Mode kMode>
void launch_forward_width(int bn, const CUtensorMap& a, const CUtensorMap& b, const Args& args, cudaStream_t stream) {
  switch (bn) {
    case 256: return launch_forward<PersistentTile<kMode, 256>>(a, b, args, stream);
    case 192: return launch_forward<PersistentTile<kMode, 192>>(a, b, args, stream);
    default: return launch_forward<NarrowTile<kMode>>(a, b, args, stream);
  }
}

}  // namespace

int64_t max_forward_experts() {
  return (k_max_smem - PersistentTile<Mode::forward, 256>::fixed_smem_bytes) / 8 - 1;
}

bool grouped_gemm_available() {
#if defined(MOE_WITH_SM90A)
  static const bool available = [] {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major == 9 && minor == 0;
  }();
  return available;
#else
  return false;
#endif
}

void grouped_gemm_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* w, bool trans_w,
                       __nv_bfloat16* y, const kernels::GroupedGemmShape& s, bool wide_tiles,
                       cudaStream_t stream) {
  MOE_CHECK(s.rows <= k_max_rows && s.num_experts <= max_forward_experts(), "grouped gemm on CUDA: ", s.rows,
            " rows over ", s.num_experts, " experts exceed the Hopper kernel (at most ", k_max_rows, " rows and ",
            max_forward_experts(), " experts)");
  const Args args{offsets, s, y, false};
  const int bn = forward_tile_width(s.n, wide_tiles);
  const CUtensorMap map_x = tensor_map(x, s.k, s.rows, k_bm);
  if (trans_w) {
    launch_forward_width<Mode::forward_trans_w>(bn, map_x, tensor_map(w, s.k, s.num_experts * s.n, bn), args, stream);
  } else {
    launch_forward_width<Mode::forward>(bn, map_x, tensor_map(w, s.n, s.num_experts * s.k, k_bk), args, stream);
  }
}

void grouped_gemm_weight_grad_bf16(const __nv_bfloat16* x, const int32_t* offsets, const __nv_bfloat16* dy,
                                   float* dw, const kernels::GroupedGemmShape& s, bool accumulate, bool persistent,
                                   cudaStream_t stream) {
  MOE_CHECK(s.rows <= k_max_rows, "grouped gemm on CUDA: ", s.rows, " rows exceed the Hopper kernel (", k_max_rows,
            ")");
  const Args args{offsets, s, dw, accumulate};
  const CUtensorMap map_x = tensor_map(x, s.k, s.rows, k_bk), map_dy = tensor_map(dy, s.n, s.rows, k_bk);
  // map_x fills the output map, which the weight gradient does not use: it writes dw itself.
  switch (weight_grad_kernel(s, persistent, multiprocessor_count())) {
    case WeightGradKernel::resident:
      return launch_resident(map_x, map_dy, args, stream);
    case WeightGradKernel::wide:
      return launch<PersistentTile<Mode::weight_grad, 256>>(map_x, map_dy, map_x, args,
                                                            weight_grad_tile_count(s, 256), stream);
    case WeightGradKernel::narrow:
      return launch<PersistentTile<Mode::weight_grad, 128>>(map_x, map_dy, map_x, args,
                                                            weight_grad_tile_count(s, 128), stream);
    case WeightGradKernel::block_per_tile:
      return launch<NarrowTile<Mode::weight_grad>>(map_x, map_dy, map_x, args, weight_grad_tile_count(s, 128),
                                                   stream);
  }
}

}  // namespace moe::cuda::sm90
