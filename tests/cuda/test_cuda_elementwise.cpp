// CUDA backend vs CPU reference for elementwise ops, reductions, row gather/scatter and AdamW,
// including unaligned views that force the scalar (non-vector) kernel paths.
#include <catch2/catch.hpp>

#include "src/ops/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe::test {
namespace {

const int64_t k_sizes[] = {1, 7, 19, 989, 4099};

// Random values in a view that starts one element into its buffer: the GPU pointer is 2 or 4
// bytes past a 16-byte boundary, so the 16-byte vector paths must step aside.
Mirror shifted(const Shape& shape, DType gpu_dtype, uint64_t seed) {
  Mirror wide = random_mirror({shape_numel(shape) + 1}, gpu_dtype, seed);
  const int64_t n = shape_numel(shape);
  return {wide.cpu.rows(1, n + 1).view(shape), wide.gpu.rows(1, n + 1).view(shape)};
}

TEST_CASE("cuda add, accumulate, scale and cast match the CPU", "[cuda][elementwise]") {
  for (int64_t n : k_sizes) {
    for (bool unaligned : {false, true}) {
      for (DType dt : {DType::bf16, DType::f32}) {
        INFO("n " << n << " unaligned " << unaligned << " dtype " << dtype_name(dt));
        const uint64_t seed = seed_of(11, {n, unaligned, static_cast<int64_t>(dt)});
        auto make = [&](uint64_t s) { return unaligned ? shifted({n}, dt, s) : random_mirror({n}, dt, s); };
        const Tolerance tol = dt == DType::bf16 ? bf16_tol() : tolerance_for(DType::f32);
        Mirror a = make(seed), b = make(seed + 1);
        Mirror out = poisoned_pair({n}, dt);
        ops::add(a.cpu, b.cpu, out.cpu);
        ops::add(a.gpu, b.gpu, out.gpu);
        require_match(out, tol, "add");

        Mirror dst = make(seed + 2);
        ops::accumulate(dst.cpu, a.cpu, 0.5f);
        ops::accumulate(dst.gpu, a.gpu, 0.5f);
        require_match(dst, tol, "accumulate same dtype");

        ops::scale(b.cpu, -1.75f);
        ops::scale(b.gpu, -1.75f);
        require_match(b, tol, "scale");
      }
      INFO("n " << n << " unaligned " << unaligned);
      const uint64_t seed = seed_of(12, {n, unaligned});
      // f32 gradient += bf16 values (the CPU sees the same values in f32).
      Mirror src = unaligned ? shifted({n}, DType::bf16, seed) : random_mirror({n}, DType::bf16, seed);
      Mirror grad = random_mirror({n}, DType::f32, seed + 1);
      ops::accumulate(grad.cpu, src.cpu, 2.0f);
      ops::accumulate(grad.gpu, src.gpu, 2.0f);
      require_match(grad, tolerance_for(DType::f32), "accumulate f32 += bf16");

      // Casts: bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even like the host helper.
      Tensor as_f32 = poisoned_on({n}, DType::f32, gpu());
      ops::cast(src.gpu, as_f32);
      require_close(as_f32, src.cpu, 0, 0, "cast bf16 -> f32");
      Mirror master = unaligned ? shifted({n}, DType::f32, seed + 2) : random_mirror({n}, DType::f32, seed + 2);
      Tensor as_bf16 = poisoned_on({n}, DType::bf16, gpu());
      ops::cast(master.gpu, as_bf16);
      std::vector<double> rounded;
      for (float v : master.cpu.to_vector<float>()) rounded.push_back(round_bf16(v));
      require_close(as_bf16.to_vector<double>(), rounded, 0, 0, "cast f32 -> bf16");
      Tensor copy = poisoned_on({n}, DType::f32, gpu());
      ops::cast(master.gpu, copy);
      require_close(copy, master.cpu, 0, 0, "cast f32 -> f32");
    }
  }
}

TEST_CASE("cuda sum, sum_squares and column_sum match the CPU", "[cuda][reductions]") {
  for (int64_t n : k_sizes) {
    for (DType dt : {DType::bf16, DType::f32}) {
      INFO("n " << n << " dtype " << dtype_name(dt));
      Mirror x = random_mirror({n}, dt, seed_of(13, {n, static_cast<int64_t>(dt)}));
      // Both sides add the same values in double; only the order differs.
      CHECK(ops::sum(x.gpu) == Approx(ops::sum(x.cpu)).epsilon(1e-9).margin(1e-9));
      CHECK(ops::sum_squares(x.gpu) == Approx(ops::sum_squares(x.cpu)).epsilon(1e-9).margin(1e-9));
    }
  }
  for (int64_t rows : {1, 7, 19, 989, 3000}) {
    for (int64_t cols : {1, 37, 64, 300}) {
      for (DType dt : {DType::f32, DType::bf16}) {
        INFO("rows " << rows << " cols " << cols << " dtype " << dtype_name(dt));
        Mirror x = random_mirror({rows, cols}, dt, seed_of(14, {rows, cols, static_cast<int64_t>(dt)}));
        Mirror out = poisoned_pair({cols}, dt);
        ops::column_sum(x.cpu, out.cpu);
        ops::column_sum(x.gpu, out.gpu);
        require_match(out, dt == DType::bf16 ? bf16_tol() : accum_tol(), "column_sum");
      }
    }
  }
}

TEST_CASE("cuda gather_rows and scatter_add_rows match the CPU", "[cuda][rows]") {
  for (int64_t src_rows : {1, 7, 19, 989}) {
    for (int64_t cols : {1, 2, 37, 64, 200}) {  // copy words of 2, 4, 8 and 16 bytes (200 bf16: 25 of 16)
      for (int64_t num_index : {1, 7, 19, 989}) {
        INFO("rows " << src_rows << " cols " << cols << " index " << num_index);
        const uint64_t seed = seed_of(15, {src_rows, cols, num_index});
        Mirror index = mirror_ids(random_int_values(num_index, src_rows, seed), {num_index});
        for (DType dt : {DType::bf16, DType::f32}) {
          Mirror src = random_mirror({src_rows, cols}, dt, seed + 1);
          Mirror dst = poisoned_pair({num_index, cols}, dt);
          ops::gather_rows(src.cpu, index.cpu, dst.cpu);
          ops::gather_rows(src.gpu, index.gpu, dst.gpu);
          require_match(dst, {0, 0}, std::string("gather ") + dtype_name(dt));
        }
        Mirror isrc = mirror_ids(random_int_values(src_rows * cols, 1000, seed + 2), {src_rows, cols});
        Mirror idst = poisoned_pair({num_index, cols}, DType::i32);
        ops::gather_rows(isrc.cpu, index.cpu, idst.cpu);
        ops::gather_rows(isrc.gpu, index.gpu, idst.gpu);
        require_equal(idst.gpu, idst.cpu, "gather i32");

        // scatter: num_index source rows into src_rows destination rows (repeats add up).
        Mirror f_src = random_mirror({num_index, cols}, DType::f32, seed + 3);
        Mirror f_dst = random_mirror({src_rows, cols}, DType::f32, seed + 4);
        ops::scatter_add_rows(f_src.cpu, index.cpu, f_dst.cpu);
        ops::scatter_add_rows(f_src.gpu, index.gpu, f_dst.gpu);
        require_match(f_dst, accum_tol(), "scatter_add f32");

        Mirror i_src = mirror_ids(random_int_values(num_index * cols, 1000, seed + 5), {num_index, cols});
        Mirror i_dst = mirror_ids(random_int_values(src_rows * cols, 1000, seed + 6), {src_rows, cols});
        ops::scatter_add_rows(i_src.cpu, index.cpu, i_dst.cpu);
        ops::scatter_add_rows(i_src.gpu, index.gpu, i_dst.gpu);
        require_equal(i_dst.gpu, i_dst.cpu, "scatter_add i32");

        // bf16 destinations round at every atomic add: keep repeats per row small (<= ~3).
        if (num_index <= 3 * src_rows) {
          Mirror b_src = random_mirror({num_index, cols}, DType::bf16, seed + 7);
          Mirror b_dst = random_mirror({src_rows, cols}, DType::bf16, seed + 8);
          ops::scatter_add_rows(b_src.cpu, index.cpu, b_dst.cpu);
          ops::scatter_add_rows(b_src.gpu, index.gpu, b_dst.gpu);
          require_match(b_dst, bf16_tol(), "scatter_add bf16");
        }
      }
    }
  }
}

TEST_CASE("cuda gather_rows poisons out-of-range rows instead of reading them; -1 gathers zeros", "[cuda][rows]") {
  Mirror src = random_mirror({4, 8}, DType::bf16, 16);
  Tensor index = Tensor::from_vector(std::vector<int32_t>{1, 4, -1, 3}, {4}, DType::i32, gpu());
  Tensor dst = Tensor::zeros({4, 8}, DType::bf16, gpu());
  ops::gather_rows(src.gpu, index, dst);
  auto got = dst.to_vector<double>();
  auto ref = src.cpu.to_vector<double>();
  for (int c = 0; c < 8; ++c) {
    CHECK(got[static_cast<size_t>(c)] == ref[static_cast<size_t>(8 + c)]);
    CHECK(std::isnan(got[static_cast<size_t>(8 + c)]));
    CHECK(got[static_cast<size_t>(16 + c)] == 0.0);  // index -1: no row
    CHECK(got[static_cast<size_t>(24 + c)] == ref[static_cast<size_t>(24 + c)]);
  }
}

TEST_CASE("cuda adamw matches the CPU", "[cuda][adamw]") {
  for (int64_t n : k_sizes) {
    for (int64_t step : {1, 10}) {
      for (bool unaligned : {false, true}) {
        INFO("n " << n << " step " << step << " unaligned " << unaligned);
        const uint64_t seed = seed_of(17, {n, step, unaligned});
        auto make = [&](uint64_t s, double lo, double hi) {
          if (!unaligned) return random_mirror({n}, DType::f32, s, lo, hi);
          Mirror wide = random_mirror({n + 1}, DType::f32, s, lo, hi);
          return Mirror{wide.cpu.rows(1, n + 1), wide.gpu.rows(1, n + 1)};
        };
        Mirror param = make(seed, -1.0, 1.0), grad = make(seed + 1, -1.0, 1.0);
        Mirror m = make(seed + 2, -0.1, 0.1), v = make(seed + 3, 1e-4, 1e-2);
        ops::AdamWParams p;
        p.lr = 1e-3f;
        p.weight_decay = 0.1f;
        p.step = step;
        ops::adamw_step(param.cpu, grad.cpu, m.cpu, v.cpu, p);
        ops::adamw_step(param.gpu, grad.gpu, m.gpu, v.gpu, p);
        require_match(param, tolerance_for(DType::f32), "adamw param");
        require_match(m, tolerance_for(DType::f32), "adamw m");
        require_match(v, tolerance_for(DType::f32), "adamw v");
      }
    }
  }
}

}  // namespace
}  // namespace moe::test
