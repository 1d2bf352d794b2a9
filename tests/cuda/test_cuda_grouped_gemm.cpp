// The CUDA grouped GEMM against the CPU reference (forward, transposed-weight forward = the input
// gradient, weight gradient) over awkward and skewed expert loads, and the "grouped" Experts
// implementation against the "loop" reference on the GPU (forward, dx, dW on the same weights).
// Every case runs on each grouped kernel the GPU can run (mma_sync everywhere, wgmma and
// wgmma_narrow on Hopper).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "experts/experts_registry.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/grouped_gemm_sm90.h"
#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

Mirror offsets_of(const std::vector<int32_t>& counts) {
  std::vector<int32_t> ends{0};
  for (int32_t c : counts) ends.push_back(ends.back() + c);
  return mirror_ids(ends, {static_cast<int64_t>(ends.size())});
}

int64_t total_of(const std::vector<int32_t>& counts) {
  int64_t n = 0;
  for (int32_t c : counts) n += c;
  return n;
}

// Expert loads: a single expert, empty and one-row experts, and 64 experts where one gets all.
std::vector<std::vector<int32_t>> loads() {
  std::vector<int32_t> random64 = random_int_values(64, 40, 7), skewed64(64, 0), sparse64(64, 0);
  for (int e = 0; e < 64; e += 5) random64[static_cast<size_t>(e)] = 0;
  random64[3] = 1;
  skewed64[37] = 989;
  sparse64[0] = 1;
  sparse64[63] = 7;
  return {{989}, {1}, {7}, {0, 1, 989}, {7, 0, 1}, random64, skewed64, sparse64};
}

// The kernels this GPU can run; each test selects them in turn and restores automatic after.
std::vector<cuda::GroupedGemmKernel> kernels_here() {
  std::vector<cuda::GroupedGemmKernel> k{cuda::GroupedGemmKernel::mma_sync};
  if (cuda::sm90::grouped_gemm_available()) {
    k.push_back(cuda::GroupedGemmKernel::wgmma);
    k.push_back(cuda::GroupedGemmKernel::wgmma_narrow);
  }
  return k;
}

struct KernelChoice {
  explicit KernelChoice(cuda::GroupedGemmKernel k) { cuda::set_grouped_gemm_kernel(k); }
  ~KernelChoice() { cuda::set_grouped_gemm_kernel(cuda::GroupedGemmKernel::automatic); }
};

// The weight gradient of every kernel here against the CPU, adding (from random gradients; experts
// without rows keep them) and overwriting (from poison, which no expert may read), dw [E, k, n].
void require_weight_grads_match(const Mirror& x, const Mirror& offsets, const Mirror& dy, int64_t num_experts,
                                uint64_t seed) {
  const int64_t k = x.cpu.size(1), n = dy.cpu.size(1);
  for (bool accumulate : {true, false}) {
    Tensor start = accumulate ? test::random_tensor({num_experts, k, n}, DType::f32, seed)
                              : poisoned_pair({num_experts, k, n}, DType::f32).cpu;
    Tensor dw_cpu = start.clone();
    ops::grouped_matmul_weight_grad(x.cpu, offsets.cpu, dy.cpu, dw_cpu, accumulate);
    for (auto kernel : kernels_here()) {
      KernelChoice choice(kernel);
      INFO("kernel " << cuda::grouped_gemm_kernel_name() << " accumulate " << accumulate);
      Tensor dw = start.to(gpu());
      ops::grouped_matmul_weight_grad(x.gpu, offsets.gpu, dy.gpu, dw, accumulate);
      require_close(dw, dw_cpu, accum_tol().atol, accum_tol().rtol, "dw");
    }
  }
}

// Appends `pad` rows of `value` after the rows of x (the padding a bound-sized buffer carries).
Mirror with_extra_rows(const Mirror& m, int64_t pad, float value) {
  const int64_t rows = m.cpu.size(0), cols = m.cpu.size(1);
  auto v = m.cpu.to_vector<float>();
  v.resize(static_cast<size_t>((rows + pad) * cols), value);
  return mirror_values(v, {rows + pad, cols}, DType::bf16);
}

Mirror with_nan_rows(const Mirror& m, int64_t pad) { return with_extra_rows(m, pad, std::nanf("")); }

struct Widths {
  int64_t k, n;
};
// {136, 40}: a weight gradient whose last row tile and column tile are clipped (k and n not
// multiples of the tile).
const std::vector<Widths> k_widths = {{64, 384}, {384, 768}, {768, 64}, {768, 768}, {136, 40}};

}  // namespace

TEST_CASE("cuda grouped matmul matches the CPU reference, plain and transposed weights", "[cuda][grouped]") {
  for (auto kernel : kernels_here()) {
  KernelChoice choice(kernel);
  INFO("kernel " << cuda::grouped_gemm_kernel_name());
  for (const auto& counts : loads()) {
    for (const Widths& wd : k_widths) {
      for (bool trans_w : {false, true}) {
        const int64_t e_num = static_cast<int64_t>(counts.size()), rows = total_of(counts);
        INFO("experts " << e_num << " rows " << rows << " k " << wd.k << " n " << wd.n << " trans_w " << trans_w
                        << " first count " << counts.front());
        const uint64_t seed = seed_of(91, {e_num, rows, wd.k, wd.n, trans_w});
        Mirror offsets = offsets_of(counts);
        Mirror x = random_mirror({rows, wd.k}, DType::bf16, seed);
        Mirror w = random_mirror(trans_w ? Shape{e_num, wd.n, wd.k} : Shape{e_num, wd.k, wd.n}, DType::bf16, seed + 1);
        Mirror y = poisoned_pair({rows, wd.n}, DType::bf16);
        ops::grouped_matmul(x.cpu, offsets.cpu, w.cpu, trans_w, y.cpu);
        ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, trans_w, y.gpu);
        require_match(y, bf16_tol(), "y");
      }
    }
  }
  }
}

TEST_CASE("cuda grouped weight gradient matches the CPU reference, adding or overwriting", "[cuda][grouped]") {
  for (auto kernel : kernels_here()) {
  KernelChoice choice(kernel);
  INFO("kernel " << cuda::grouped_gemm_kernel_name());
  for (const auto& counts : loads()) {
    for (const Widths& wd : k_widths) {
      for (bool accumulate : {true, false}) {
        const int64_t e_num = static_cast<int64_t>(counts.size()), rows = total_of(counts);
        INFO("experts " << e_num << " rows " << rows << " k " << wd.k << " n " << wd.n << " accumulate " << accumulate);
        const uint64_t seed = seed_of(92, {e_num, rows, wd.k, wd.n});
        Mirror offsets = offsets_of(counts);
        Mirror x = random_mirror({rows, wd.k}, DType::bf16, seed);
        Mirror dy = random_mirror({rows, wd.n}, DType::bf16, seed + 1);
        // Adding: dw starts from random values, and experts without rows keep them. Overwriting:
        // dw starts poisoned, which no expert may read, and experts without rows get zeros.
        Mirror dw = accumulate ? random_mirror({e_num, wd.k, wd.n}, DType::f32, seed + 2)
                               : poisoned_pair({e_num, wd.k, wd.n}, DType::f32);
        ops::grouped_matmul_weight_grad(x.cpu, offsets.cpu, dy.cpu, dw.cpu, accumulate);
        ops::grouped_matmul_weight_grad(x.gpu, offsets.gpu, dy.gpu, dw.gpu, accumulate);
        require_match(dw, accum_tol(), "dw");
      }
    }
  }
  }
}

// Buffers sized by a bound carry rows past offsets[E]: the forward must not write them and the
// weight gradient must not read them (NaN there would poison the last expert's sums).
TEST_CASE("cuda grouped gemms ignore the padding rows past the last offset", "[cuda][grouped]") {
  for (auto kernel : kernels_here()) {
    KernelChoice choice(kernel);
    // (the last: over 256 rows an expert, so the wide tiles rather than a resident dy)
    for (const auto& counts : {std::vector<int32_t>{5, 0, 130}, std::vector<int32_t>{64, 1, 63}, loads()[5],
                               std::vector<int32_t>{300, 0, 500}}) {
      const int64_t e_num = static_cast<int64_t>(counts.size()), rows = total_of(counts), k = 128, n = 256;
      INFO("kernel " << cuda::grouped_gemm_kernel_name() << " experts " << e_num << " rows " << rows);
      const uint64_t seed = seed_of(95, {e_num, rows});
      Mirror offsets = offsets_of(counts);
      Mirror x = with_nan_rows(random_mirror({rows, k}, DType::bf16, seed), 70);
      Mirror dy = with_nan_rows(random_mirror({rows, n}, DType::bf16, seed + 1), 70);
      Mirror w = random_mirror({e_num, k, n}, DType::bf16, seed + 2);
      Mirror y = poisoned_pair({rows + 70, n}, DType::bf16);
      ops::grouped_matmul(x.cpu, offsets.cpu, w.cpu, false, y.cpu);
      ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, false, y.gpu);
      require_close(y.gpu.rows(0, rows), y.cpu.rows(0, rows), bf16_tol().atol, bf16_tol().rtol, "y");
      Mirror dw = random_mirror({e_num, k, n}, DType::f32, seed + 3);
      ops::grouped_matmul_weight_grad(x.cpu, offsets.cpu, dy.cpu, dw.cpu);
      ops::grouped_matmul_weight_grad(x.gpu, offsets.gpu, dy.gpu, dw.gpu);
      require_match(dw, accum_tol(), "dw");
    }
  }
}

// Wide tiles run persistently: one block per multiprocessor walks several tiles, its loader
// filling the ring with the next tile while the last one is stored. Thousands of rows give each
// block several tiles; 1, 4, 5, 6 and 12 k-slices per tile (k = 200 ends in a partial slice) carry
// the ring's phase across tiles; 45 experts leave a partial warp in the schedule's scan. The last
// expert ends 1 row past a whole tile, so its partial tile must not be stored whole: the padding
// rows of x are finite and the rows of y past the last offset must stay poisoned.
TEST_CASE("cuda grouped matmul walks many tiles per block", "[cuda][grouped]") {
  std::vector<int32_t> counts64 = random_int_values(64, 400, 11), counts45 = random_int_values(45, 600, 13);
  for (int e = 0; e < 64; e += 9) counts64[static_cast<size_t>(e)] = 0;
  counts64[5] = 1;
  counts64[6] = 3000;  // one expert with many row tiles in a row
  counts64[63] = 129;
  counts45[44] = 129;
  const int64_t pad = 100;
  for (const auto& counts : {counts64, counts45}) {
    const int64_t e_num = static_cast<int64_t>(counts.size()), rows = total_of(counts);
    Mirror offsets = offsets_of(counts);
    // n = 384 takes the 192-wide tiles, 512 and more the 256-wide ones.
    for (const Widths& wd : {Widths{64, 512}, Widths{200, 512}, Widths{320, 512}, Widths{384, 768}, Widths{768, 1024},
                             Widths{768, 384}}) {
      for (bool trans_w : {false, true}) {
        const uint64_t seed = seed_of(96, {e_num, rows, wd.k, wd.n, trans_w});
        Mirror x = with_extra_rows(random_mirror({rows, wd.k}, DType::bf16, seed), pad, 1.0f);
        Mirror w = random_mirror(trans_w ? Shape{e_num, wd.n, wd.k} : Shape{e_num, wd.k, wd.n}, DType::bf16, seed + 1);
        Tensor y_cpu = poisoned_on({rows + pad, wd.n}, DType::f32, Device::cpu());
        ops::grouped_matmul(x.cpu, offsets.cpu, w.cpu, trans_w, y_cpu);
        for (auto kernel : kernels_here()) {
          KernelChoice choice(kernel);
          INFO("kernel " << cuda::grouped_gemm_kernel_name() << " experts " << e_num << " rows " << rows << " k "
                         << wd.k << " n " << wd.n << " trans_w " << trans_w);
          Tensor y = poisoned_on({rows + pad, wd.n}, DType::bf16, gpu());
          ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, trans_w, y);
          require_close(y.rows(0, rows), y_cpu.rows(0, rows), bf16_tol().atol, bf16_tol().rtol, "y");
          const std::vector<float> tail = y.rows(rows, rows + pad).to(Device::cpu()).to_vector<float>();
          size_t written = 0;
          for (float v : tail) written += std::isnan(v) ? 0 : 1;
          REQUIRE(written == 0);
        }
      }
    }
  }
}

// The persistent weight gradient walks many tiles per block, its ring passing from one expert's
// reduction (one to 47 k-slices here) to the next's, skipping experts with no rows when adding.
TEST_CASE("cuda grouped weight gradient walks many tiles per block", "[cuda][grouped]") {
  std::vector<int32_t> counts = random_int_values(64, 400, 17);
  for (int e = 0; e < 64; e += 9) counts[static_cast<size_t>(e)] = 0;
  counts[5] = 1;
  counts[6] = 3000;
  counts[63] = 129;
  const int64_t e_num = 64, rows = total_of(counts);
  Mirror offsets = offsets_of(counts);
  // On 132 multiprocessors {200, 512} takes the 256-column tiles with dy resident (247 rows an
  // expert on average), {768, 384} the 128-wide
  // ones (weight_grad_tile_width: a quarter of the wide columns would be past n), and n = 168 the
  // 128-wide ones too (n < 256), its second clipped at n; k = 200 and 136 clip the last row tile.
  for (const Widths& wd : {Widths{200, 512}, Widths{768, 384}, Widths{136, 168}}) {
    const uint64_t seed = seed_of(97, {rows, wd.k, wd.n});
    Mirror x = random_mirror({rows, wd.k}, DType::bf16, seed);
    Mirror dy = random_mirror({rows, wd.n}, DType::bf16, seed + 1);
    for (bool accumulate : {true, false}) {
      Tensor start = test::random_tensor({e_num, wd.k, wd.n}, DType::f32, seed + 2);
      Tensor dw_cpu = start.clone();
      ops::grouped_matmul_weight_grad(x.cpu, offsets.cpu, dy.cpu, dw_cpu, accumulate);
      for (auto kernel : kernels_here()) {
        KernelChoice choice(kernel);
        INFO("kernel " << cuda::grouped_gemm_kernel_name() << " k " << wd.k << " n " << wd.n << " accumulate "
                       << accumulate);
        Tensor dw = start.to(gpu());
        ops::grouped_matmul_weight_grad(x.gpu, offsets.gpu, dy.gpu, dw, accumulate);
        require_close(dw, dw_cpu, accum_tol().atol, accum_tol().rtol, "dw");
      }
    }
  }
}

// The persistent weight gradient's tile width on a GPU of 132 multiprocessors (H100/H200 SXM): wide
// where its rounds of tiles fill as well as the narrow ones', narrow where they would not or where
// the wide columns past n are many.
TEST_CASE("cuda weight gradient tile width weighs idle multiprocessors and columns past n", "[cuda][grouped]") {
  using cuda::sm90::weight_grad_tile_width;
  auto shape = [](int64_t e, int64_t k, int64_t n) { return kernels::GroupedGemmShape{e, 0, k, n}; };
  REQUIRE(weight_grad_tile_width(shape(64, 1024, 8192), 132) == 256);  // Switch-like, up
  REQUIRE(weight_grad_tile_width(shape(64, 4096, 1024), 132) == 256);  // Switch-like, down
  REQUIRE(weight_grad_tile_width(shape(64, 768, 768), 132) == 256);    // MoE-small, up: 97% filled either way
  REQUIRE(weight_grad_tile_width(shape(64, 384, 768), 132) == 128);    // MoE-small, down: 4.36 rounds against 8.73
  REQUIRE(weight_grad_tile_width(shape(64, 768, 384), 132) == 128);    // n = 384: a quarter of the wide columns empty
  REQUIRE(weight_grad_tile_width(shape(64, 768, 168), 132) == 128);    // n < 256
  REQUIRE(weight_grad_tile_width(shape(66, 128, 448), 132) == 256);    // whole rounds either way, as many columns past n
  REQUIRE(weight_grad_tile_width(shape(1, 768, 768), 132) == 128);     // a few tiles: the narrow ones use more SMs
}

// Wide weight-gradient tiles whose last column tile runs past n (448 = 1.75 x 256) and whose row
// tiles end at k: half as many experts as multiprocessors, 1 x 2 tiles each, one whole round (the
// narrow tiles would take two, with as many columns past n), so the wide tiles are chosen (about
// 300 rows an expert: over the resident dy's 256).
TEST_CASE("cuda grouped weight gradient clips wide tiles at n", "[cuda][grouped]") {
  const int64_t e_num = std::max<int64_t>(cuda::multiprocessor_count() / 2, 1), k = 120, n = 448;
  std::vector<int32_t> counts = random_int_values(e_num, 600, 31);
  counts[3] = 0;
  const int64_t rows = total_of(counts);
  Mirror offsets = offsets_of(counts);
  Mirror x = random_mirror({rows, k}, DType::bf16, 33);
  Mirror dy = random_mirror({rows, n}, DType::bf16, 34);
  if (cuda::multiprocessor_count() % 2 == 0) {
    REQUIRE(cuda::sm90::weight_grad_tile_width({e_num, rows, k, n}, cuda::multiprocessor_count()) == 256);
  }
  require_weight_grads_match(x, offsets, dy, e_num, 35);
}

// The wide persistent weight gradient on short reductions (64.5 rows an expert on average, one or
// two k-slices) and long ones (644 on average): 8 experts of k = 1000 (the last row tile clipped at k) and
// n = 968 (the last wide column tile clipped at n), an expert with no rows and one with a single
// row; 2 x 132 wide tiles fill their rounds as well as the narrow ones, so the wide ones are chosen
// for the long reductions, and dy resident (at most 256 rows an expert on average) for the short.
TEST_CASE("cuda grouped weight gradient wide tiles for short and long reductions", "[cuda][grouped]") {
  const int64_t e_num = 8, k = 1000, n = 968;
  const std::vector<int32_t> long_counts{700, 1000, 0, 613, 900, 1, 840, 1100};
  const std::vector<int32_t> short_counts{70, 100, 0, 61, 90, 1, 84, 110};
  for (const std::vector<int32_t>& counts : {long_counts, short_counts}) {
    const int64_t rows = total_of(counts);
    const kernels::GroupedGemmShape s{e_num, rows, k, n};
    if (cuda::multiprocessor_count() == 132) {
      REQUIRE(cuda::sm90::weight_grad_kernel(s, true, 132) ==
              (counts == long_counts ? cuda::sm90::WeightGradKernel::wide : cuda::sm90::WeightGradKernel::resident));
    }
    Mirror offsets = offsets_of(counts);
    Mirror x = random_mirror({rows, k}, DType::bf16, seed_of(41, {rows}));
    Mirror dy = random_mirror({rows, n}, DType::bf16, seed_of(42, {rows}));
    INFO("rows " << rows);
    require_weight_grads_match(x, offsets, dy, e_num, 43);
  }
}

// A Switch-like load: 64 experts of about 200 rows and one of 2000, so dy stays resident (the 2000
// rows in 7 chunks of at most 320, the later ones added) and every block walks several units.
TEST_CASE("cuda grouped weight gradient wide tiles over several rounds and a long expert", "[cuda][grouped]") {
  const int64_t e_num = 64, k = 256, n = 1024;
  std::vector<int32_t> counts = random_int_values(e_num, 400, 51);
  counts[5] = 2000;
  counts[9] = 0;
  const int64_t rows = total_of(counts);
  const kernels::GroupedGemmShape s{e_num, rows, k, n};
  if (cuda::multiprocessor_count() == 132) {
    REQUIRE(cuda::sm90::weight_grad_kernel(s, true, 132) == cuda::sm90::WeightGradKernel::resident);
  }
  INFO("rows " << rows);
  Mirror offsets = offsets_of(counts);
  Mirror x = random_mirror({rows, k}, DType::bf16, 52);
  Mirror dy = random_mirror({rows, n}, DType::bf16, 53);
  require_weight_grads_match(x, offsets, dy, e_num, 54);
}

// The resident dy at the edges of its chunks: experts of 320 rows (one whole chunk), 321 (a chunk
// and one row), 640 (two whole chunks), 64 and 65 (one slice and one row past it), one row, none;
// k = 1000 (8 row tiles of dw, the last clipped at k: one unit a column block) and 1304 (11: a
// unit of 8 and one of 3), n = 968 (the last column block clipped at n); rows of NaN past the last
// expert, which no slice may multiply unzeroed.
TEST_CASE("cuda grouped weight gradient with dy resident at its chunks' edges", "[cuda][grouped]") {
  const std::vector<int32_t> counts{320, 321, 640, 1, 0, 64, 65, 200};
  const int64_t e_num = 8, rows = total_of(counts), n = 968;
  for (int64_t k : {1000, 1304}) {
    const kernels::GroupedGemmShape s{e_num, rows, k, n};
    REQUIRE(cuda::sm90::weight_grad_kernel(s, true, 132) == cuda::sm90::WeightGradKernel::resident);
    INFO("k " << k);
    Mirror offsets = offsets_of(counts);
    Mirror x = with_nan_rows(random_mirror({rows, k}, DType::bf16, seed_of(61, {k})), 70);
    Mirror dy = with_nan_rows(random_mirror({rows, n}, DType::bf16, seed_of(62, {k})), 70);
    require_weight_grads_match(x, offsets, dy, e_num, seed_of(63, {k}));
  }
}

// Which weight-gradient kernel a shape runs on 132 multiprocessors, and past the experts the
// persistent kernels sort in shared memory (512) the fallback gives the same results, adding and
// overwriting: at about 300 rows an expert 512 experts take the wide tiles, 513 and 600 a block per
// tile (at 256 rows or fewer, dy resident, which sorts nothing).
TEST_CASE("cuda grouped weight gradient kernel choice, and its fallbacks for many experts", "[cuda][grouped]") {
  using cuda::sm90::WeightGradKernel;
  using cuda::sm90::weight_grad_kernel;
  auto shape = [](int64_t e, int64_t rows, int64_t k, int64_t n) { return kernels::GroupedGemmShape{e, rows, k, n}; };
  REQUIRE(weight_grad_kernel(shape(64, 16384, 1024, 8192), true, 132) == WeightGradKernel::resident);  // Switch-like
  REQUIRE(weight_grad_kernel(shape(64, 16384, 4096, 1024), true, 132) == WeightGradKernel::resident);
  REQUIRE(weight_grad_kernel(shape(64, 16448, 1024, 8192), true, 132) == WeightGradKernel::wide);  // 257 rows on average
  REQUIRE(weight_grad_kernel(shape(64, 98304, 768, 768), true, 132) == WeightGradKernel::wide);     // MoE-small
  REQUIRE(weight_grad_kernel(shape(64, 98304, 384, 768), true, 132) == WeightGradKernel::narrow);
  REQUIRE(weight_grad_kernel(shape(64, 16384, 1024, 8192), false, 132) == WeightGradKernel::block_per_tile);
  REQUIRE(weight_grad_kernel(shape(512, 5120, 128, 256), true, 132) == WeightGradKernel::resident);
  REQUIRE(weight_grad_kernel(shape(512, 153600, 128, 256), true, 132) == WeightGradKernel::wide);
  REQUIRE(weight_grad_kernel(shape(513, 153900, 128, 256), true, 132) == WeightGradKernel::block_per_tile);
  REQUIRE(weight_grad_kernel(shape(600, 180000, 128, 256), true, 132) == WeightGradKernel::block_per_tile);
  if (!cuda::sm90::grouped_gemm_available()) return;  // the rest runs the Hopper kernels
  const int64_t k = 128, n = 256;
  for (int64_t num_experts : {512, 513, 600}) {
    std::vector<int32_t> counts = random_int_values(num_experts, 600, seed_of(44, {num_experts}));
    counts[7] = 0;
    const int64_t rows = total_of(counts);
    INFO("experts " << num_experts << " rows " << rows << " kernel "
                    << static_cast<int>(weight_grad_kernel(shape(num_experts, rows, k, n), true,
                                                           cuda::multiprocessor_count())));
    Mirror offsets = offsets_of(counts);
    Mirror x = random_mirror({rows, k}, DType::bf16, seed_of(45, {num_experts}));
    Mirror dy = random_mirror({rows, n}, DType::bf16, seed_of(46, {num_experts}));
    require_weight_grads_match(x, offsets, dy, num_experts, seed_of(47, {num_experts}));
  }
}

// The Hopper forward keeps its row-tile schedule in shared memory: at its limit it runs (all of
// its shared memory in use); past it, the automatic choice takes the portable kernel with the same
// results and a named wgmma kernel refuses.
TEST_CASE("cuda grouped matmul at and past the most experts the Hopper schedule holds", "[cuda][grouped]") {
  if (!cuda::sm90::grouped_gemm_available()) return;  // only the portable kernel here
  const int64_t most = cuda::sm90::max_forward_experts(), k = 64, n = 512;
  for (int64_t e_num : {most, most + 3}) {
    INFO("experts " << e_num << " (most " << most << ")");
    std::vector<int32_t> counts = random_int_values(e_num, 3, 12);
    const int64_t rows = total_of(counts);
    Mirror offsets = offsets_of(counts);
    Mirror x = random_mirror({rows, k}, DType::bf16, 97);
    Mirror w = random_mirror({e_num, k, n}, DType::bf16, 98);
    Mirror y = poisoned_pair({rows, n}, DType::bf16);
    ops::grouped_matmul(x.cpu, offsets.cpu, w.cpu, false, y.cpu);
    ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, false, y.gpu);
    require_match(y, bf16_tol(), "y");
    if (e_num > most) {
      KernelChoice choice(cuda::GroupedGemmKernel::wgmma);
      REQUIRE_THROWS_WITH(ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, false, y.gpu),
                          Catch::Contains("takes at most"));
    }
  }
}

TEST_CASE("cuda grouped matmul rejects widths that are not multiples of 8", "[cuda][grouped][errors]") {
  Mirror offsets = offsets_of({3, 4});
  Mirror x = random_mirror({7, 12}, DType::bf16, 5), w = random_mirror({2, 12, 16}, DType::bf16, 6);
  Mirror y = poisoned_pair({7, 16}, DType::bf16);
  REQUIRE_THROWS_WITH(ops::grouped_matmul(x.gpu, offsets.gpu, w.gpu, false, y.gpu),
                      Catch::Matchers::Contains("grouped_matmul on CUDA: widths 12 and 16 must be multiples of 8"));
}

TEST_CASE("cuda grouped experts equal the loop experts on the same weights", "[cuda][grouped][experts]") {
  for (auto kernel : kernels_here()) {
  KernelChoice choice(kernel);
  INFO("kernel " << cuda::grouped_gemm_kernel_name());
  for (ops::Activation act : {ops::Activation::swiglu, ops::Activation::gelu}) {
    for (const auto& counts : {std::vector<int32_t>{0, 1, 989}, loads()[5]}) {
      const int64_t e_num = static_cast<int64_t>(counts.size()), rows = total_of(counts), d = 384, f = 64;
      INFO("activation " << ops::activation_name(act) << " experts " << e_num << " rows " << rows);
      const ExpertsSpec spec{e_num, 0, e_num, d, f, act, 0.05, 0.05};
      ParamStore loop_store, grouped_store;
      auto loop = make_experts("loop", loop_store, "experts", spec);
      auto grouped = make_experts("grouped", grouped_store, "experts", spec);
      for (ParamStore* store : {&loop_store, &grouped_store}) {
        store->allocate(gpu(), DType::bf16);
        store->initialize(17);
        // Stale gradients of an earlier step: the grouped experts' first write stores over them
        // (ParamStore::mark_first_write_grad), the loop's are zeroed first.
        Tensor& grads = store->flat_grads(ParamGroup::expert);
        grads.copy_from(Tensor::from_vector(std::vector<float>(static_cast<size_t>(grads.numel()), 7.0f),
                                            grads.shape(), DType::f32));
        store->zero_grads();
      }
      Tensor x = random_mirror({rows, d}, DType::bf16, seed_of(93, {e_num, rows})).gpu;
      Tensor dy = random_mirror({rows, d}, DType::bf16, seed_of(94, {e_num, rows})).gpu;
      std::vector<int64_t> counts64(counts.begin(), counts.end());
      ExpertsSaved loop_saved, grouped_saved;
      Tensor y_loop = loop->forward(x, ExpertRows::from_counts(counts64), loop_saved);
      Tensor y_grouped = grouped->forward(x, ExpertRows::from_offsets(offsets_of(counts).gpu), grouped_saved);
      require_close(y_grouped, y_loop, bf16_tol().atol, bf16_tol().rtol, "y");
      require_close(grouped->backward(grouped_saved, dy), loop->backward(loop_saved, dy), bf16_tol().atol,
                    bf16_tol().rtol, "dx");
      for (const char* name : {"experts.w_up", "experts.w_down"}) {
        require_close(grouped_store.grad(grouped_store.find(name)), loop_store.grad(loop_store.find(name)),
                      bf16_tol().atol, bf16_tol().rtol, name);
      }
    }
  }
  }
}

}  // namespace moe::test
