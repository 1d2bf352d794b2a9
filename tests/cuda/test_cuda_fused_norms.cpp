// CUDA vs CPU reference for the fused residual add + RMSNorm/LayerNorm (forward) and the norm
// backward with the residual gradient added: rows 1, 7, 989, widths 768 (16-byte vector path)
// and 37 (scalar path), poisoned outputs, and in place (h = x, dresidual = dx). Then the
// backward's parameter-gradient partials on many rows: dw, db and dx against the CPU, and bit
// for bit the same on a second run.
#include <catch2/catch.hpp>

#include <cstring>

#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

const int64_t k_rows[] = {1, 7, 989};
const int64_t k_widths[] = {768, 37};

// The same values again (a copy on each side), for the in-place variants.
Mirror copy_of(const Mirror& m) { return {m.cpu.clone(), m.gpu.clone()}; }

// Bit-for-bit equality of two f32 tensors.
void require_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  const std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
  INFO(what);
  REQUIRE(va.size() == vb.size());
  REQUIRE(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)) == 0);
}

TEST_CASE("cuda add + rmsnorm forward and backward with the residual gradient match the CPU",
          "[cuda][norms][fused]") {
  for (int64_t dim : k_widths) {
    for (int64_t rows : k_rows) {
      INFO("rows " << rows << " dim " << dim);
      const uint64_t seed = seed_of(31, {rows, dim});
      Mirror x = random_mirror({rows, dim}, DType::bf16, seed, -2.0, 2.0);
      Mirror delta = random_mirror({rows, dim}, DType::bf16, seed + 1);
      Mirror w = random_mirror({dim}, DType::bf16, seed + 2, 0.5, 1.5);
      Mirror h = poisoned_pair({rows, dim}, DType::bf16), y = poisoned_pair({rows, dim}, DType::bf16);
      Mirror rstd = poisoned_pair({rows}, DType::f32);
      ops::add_rmsnorm_forward(x.cpu, delta.cpu, w.cpu, h.cpu, y.cpu, rstd.cpu, 1e-5f);
      ops::add_rmsnorm_forward(x.gpu, delta.gpu, w.gpu, h.gpu, y.gpu, rstd.gpu, 1e-5f);
      require_match(h, bf16_tol(), "add_rmsnorm h");
      require_match(y, bf16_tol(), "add_rmsnorm y");
      require_match(rstd, accum_tol(), "add_rmsnorm rstd");

      Mirror in_place = copy_of(x);  // h = x: the GPU writes the residual stream over its input
      ops::add_rmsnorm_forward(in_place.gpu, delta.gpu, w.gpu, in_place.gpu, y.gpu, rstd.gpu, 1e-5f);
      require_close(in_place.gpu, h.cpu, bf16_tol().atol, bf16_tol().rtol, "add_rmsnorm h in place");
      require_match(y, bf16_tol(), "add_rmsnorm y in place");

      // Backward from the GPU's own h (bf16) on both sides, so only the kernels differ.
      Mirror saved_h = mirror_values(h.gpu.to_vector<float>(), {rows, dim}, DType::bf16);
      Mirror saved = mirror_of(rstd.cpu, DType::f32);
      Mirror dy = random_mirror({rows, dim}, DType::bf16, seed + 3);
      Mirror dres = random_mirror({rows, dim}, DType::bf16, seed + 4);
      Mirror dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror dw = random_mirror({dim}, DType::f32, seed + 5);
      ops::rmsnorm_backward(saved_h.cpu, w.cpu, saved.cpu, dy.cpu, dx.cpu, dw.cpu, dres.cpu);
      ops::rmsnorm_backward(saved_h.gpu, w.gpu, saved.gpu, dy.gpu, dx.gpu, dw.gpu, dres.gpu);
      require_match(dx, bf16_tol(), "rmsnorm dx + dresidual");
      require_match(dw, accum_tol(), "rmsnorm dw");

      Mirror acc = copy_of(dres);  // dresidual = dx: the residual gradient accumulated into
      ops::rmsnorm_backward(saved_h.gpu, w.gpu, saved.gpu, dy.gpu, acc.gpu, dw.gpu, acc.gpu);
      require_close(acc.gpu, dx.cpu, bf16_tol().atol, bf16_tol().rtol, "rmsnorm dx in place");
    }
  }
}

TEST_CASE("cuda add + layernorm forward and backward with the residual gradient match the CPU",
          "[cuda][norms][fused]") {
  for (int64_t dim : k_widths) {
    for (int64_t rows : k_rows) {
      INFO("rows " << rows << " dim " << dim);
      const uint64_t seed = seed_of(32, {rows, dim});
      Mirror x = random_mirror({rows, dim}, DType::bf16, seed, 1.0, 4.0);  // a large mean
      Mirror delta = random_mirror({rows, dim}, DType::bf16, seed + 1);
      Mirror w = random_mirror({dim}, DType::bf16, seed + 2, 0.5, 1.5);
      Mirror b = random_mirror({dim}, DType::bf16, seed + 3);
      Mirror h = poisoned_pair({rows, dim}, DType::bf16), y = poisoned_pair({rows, dim}, DType::bf16);
      Mirror mean = poisoned_pair({rows}, DType::f32), rstd = poisoned_pair({rows}, DType::f32);
      ops::add_layernorm_forward(x.cpu, delta.cpu, w.cpu, b.cpu, h.cpu, y.cpu, mean.cpu, rstd.cpu, 1e-5f);
      ops::add_layernorm_forward(x.gpu, delta.gpu, w.gpu, b.gpu, h.gpu, y.gpu, mean.gpu, rstd.gpu, 1e-5f);
      require_match(h, bf16_tol(), "add_layernorm h");
      require_match(y, bf16_tol(), "add_layernorm y");
      require_match(mean, bf16_tol(), "add_layernorm mean");  // of h, which the GPU rounds to bf16
      require_match(rstd, bf16_tol(), "add_layernorm rstd");

      Mirror in_place = copy_of(x);
      ops::add_layernorm_forward(in_place.gpu, delta.gpu, w.gpu, b.gpu, in_place.gpu, y.gpu, mean.gpu, rstd.gpu,
                                 1e-5f);
      require_close(in_place.gpu, h.cpu, bf16_tol().atol, bf16_tol().rtol, "add_layernorm h in place");
      require_match(y, bf16_tol(), "add_layernorm y in place");

      // The statistics of the GPU's bf16 h, computed on the CPU, feed both backwards.
      Mirror saved_h = mirror_values(h.gpu.to_vector<float>(), {rows, dim}, DType::bf16);
      Tensor y_ref = Tensor::empty({rows, dim}, DType::f32);
      Tensor mean_ref = Tensor::empty({rows}, DType::f32), rstd_ref = Tensor::empty({rows}, DType::f32);
      ops::layernorm_forward(saved_h.cpu, w.cpu, b.cpu, y_ref, mean_ref, rstd_ref, 1e-5f);
      Mirror saved_mean = mirror_of(mean_ref, DType::f32), saved_rstd = mirror_of(rstd_ref, DType::f32);
      Mirror dy = random_mirror({rows, dim}, DType::bf16, seed + 4);
      Mirror dres = random_mirror({rows, dim}, DType::bf16, seed + 5);
      Mirror dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror dw = random_mirror({dim}, DType::f32, seed + 6), db = random_mirror({dim}, DType::f32, seed + 7);
      ops::layernorm_backward(saved_h.cpu, w.cpu, saved_mean.cpu, saved_rstd.cpu, dy.cpu, dx.cpu, dw.cpu, db.cpu,
                              dres.cpu);
      ops::layernorm_backward(saved_h.gpu, w.gpu, saved_mean.gpu, saved_rstd.gpu, dy.gpu, dx.gpu, dw.gpu, db.gpu,
                              dres.gpu);
      require_match(dx, bf16_tol(), "layernorm dx + dresidual");
      require_match(dw, accum_tol(), "layernorm dw");
      require_match(db, accum_tol(), "layernorm db");

      Mirror acc = copy_of(dres);
      ops::layernorm_backward(saved_h.gpu, w.gpu, saved_mean.gpu, saved_rstd.gpu, dy.gpu, acc.gpu, dw.gpu, db.gpu,
                              acc.gpu);
      require_close(acc.gpu, dx.cpu, bf16_tol().atol, bf16_tol().rtol, "layernorm dx in place");
    }
  }
}

// Many rows (a last round with idle teams) so the parameter gradients come from many block
// partials; widths 1032 (vector path: teams of 160 threads for 129 groups of 8 columns), 100
// (scalar path), 1100 (scalar path, rows cut into 3 column slices) and 8200 (vector path, 1025
// groups of 8 in 3 slices of 512 threads); each norm's kernels with and without the residual gradient.
TEST_CASE("cuda norm backward parameter gradients over many rows match the CPU and repeat exactly",
          "[cuda][norms][fused]") {
  const int64_t rows = 5000;
  for (int64_t dim : {1032, 100, 1100, 8200}) {
    const uint64_t seed = seed_of(33, {rows, dim});
    Mirror x = random_mirror({rows, dim}, DType::bf16, seed, -2.0, 2.0);
    Mirror w = random_mirror({dim}, DType::bf16, seed + 1, 0.5, 1.5);
    Mirror dy = random_mirror({rows, dim}, DType::bf16, seed + 2);
    Mirror dres = random_mirror({rows, dim}, DType::bf16, seed + 3);
    Tensor y = Tensor::empty({rows, dim}, DType::f32);  // the forwards give the statistics only
    Tensor mean_ref = Tensor::empty({rows}, DType::f32), rstd_ref = Tensor::empty({rows}, DType::f32);
    ops::rmsnorm_forward(x.cpu, w.cpu, y, rstd_ref, 1e-5f);
    Mirror rstd = mirror_of(rstd_ref, DType::f32);
    ops::layernorm_forward(x.cpu, w.cpu, w.cpu, y, mean_ref, rstd_ref, 1e-5f);
    Mirror ln_mean = mirror_of(mean_ref, DType::f32), ln_rstd = mirror_of(rstd_ref, DType::f32);
    for (bool with_dres : {true, false}) {  // both kernels of each norm: with and without the residual gradient
      INFO("rows " << rows << " dim " << dim << " dresidual " << with_dres);
      const Tensor dres_cpu = with_dres ? dres.cpu : Tensor(), dres_gpu = with_dres ? dres.gpu : Tensor();

      Mirror dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror dw = random_mirror({dim}, DType::f32, seed + 4);
      const Tensor dw_start = dw.gpu.clone();
      ops::rmsnorm_backward(x.cpu, w.cpu, rstd.cpu, dy.cpu, dx.cpu, dw.cpu, dres_cpu);
      ops::rmsnorm_backward(x.gpu, w.gpu, rstd.gpu, dy.gpu, dx.gpu, dw.gpu, dres_gpu);
      require_match(dx, bf16_tol(), "rmsnorm dx");
      require_match(dw, accum_tol(), "rmsnorm dw");
      Tensor dw_again = dw_start.clone();
      ops::rmsnorm_backward(x.gpu, w.gpu, rstd.gpu, dy.gpu, dx.gpu, dw_again, dres_gpu);
      require_same_bits(dw_again, dw.gpu, "rmsnorm dw on a second run");

      Mirror ln_dx = poisoned_pair({rows, dim}, DType::bf16);
      Mirror ln_dw = random_mirror({dim}, DType::f32, seed + 5), ln_db = random_mirror({dim}, DType::f32, seed + 6);
      const Tensor ln_dw_start = ln_dw.gpu.clone(), ln_db_start = ln_db.gpu.clone();
      ops::layernorm_backward(x.cpu, w.cpu, ln_mean.cpu, ln_rstd.cpu, dy.cpu, ln_dx.cpu, ln_dw.cpu, ln_db.cpu, dres_cpu);
      ops::layernorm_backward(x.gpu, w.gpu, ln_mean.gpu, ln_rstd.gpu, dy.gpu, ln_dx.gpu, ln_dw.gpu, ln_db.gpu,
                              dres_gpu);
      require_match(ln_dx, bf16_tol(), "layernorm dx");
      require_match(ln_dw, accum_tol(), "layernorm dw");
      require_match(ln_db, accum_tol(), "layernorm db");
      Tensor ln_dw_again = ln_dw_start.clone(), ln_db_again = ln_db_start.clone();
      ops::layernorm_backward(x.gpu, w.gpu, ln_mean.gpu, ln_rstd.gpu, dy.gpu, ln_dx.gpu, ln_dw_again, ln_db_again,
                              dres_gpu);
      require_same_bits(ln_dw_again, ln_dw.gpu, "layernorm dw on a second run");
      require_same_bits(ln_db_again, ln_db.gpu, "layernorm db on a second run");
    }
  }
}

}  // namespace
}  // namespace moe::test
