// The fused residual add + norm (forward) and norm + residual gradient (backward) on the CPU:
// bit-identical to the unfused ops they replace (so CPU training losses do not move), in place
// too, and their bad-input messages. Their finite-difference checks: tests/model (Norm module).
#include <string>

#include "src/ops/ops.h"
#include "tests/kernels/kernel_checks.h"

using namespace moe;
using namespace moe::test;

namespace {

const DType k_float_types[] = {DType::f32, DType::f64};

// Exact equality, element by element.
void require_same(const Tensor& got, const Tensor& ref, const std::string& what) {
  require_close(values_of(got), values_of(ref), 0.0, 0.0, what + " " + dtype_name(got.dtype()));
}

struct NormInputs {
  Tensor x, delta, w, b;
};

NormInputs random_inputs(int64_t rows, int64_t dim, DType dt, uint64_t seed) {
  return {random_tensor({rows, dim}, dt, seed, Device::cpu(), -2.0, 3.0),
          random_tensor({rows, dim}, dt, seed + 1, Device::cpu(), -1.0, 1.0),
          random_tensor({dim}, dt, seed + 2, Device::cpu(), 0.5, 1.5), random_tensor({dim}, dt, seed + 3)};
}

}  // namespace

TEST_CASE("add + rmsnorm equals add then rmsnorm, bit for bit, also in place", "[kernels][cpu][fused]") {
  for (DType dt : k_float_types) {
    for (int64_t rows : {1, 7, 19}) {
      const int64_t dim = 19;
      NormInputs in = random_inputs(rows, dim, dt, 20 + rows);
      Tensor h_ref = poisoned({rows, dim}, dt), y_ref = poisoned({rows, dim}, dt), rstd_ref = poisoned({rows}, dt);
      ops::add(in.x, in.delta, h_ref);
      ops::rmsnorm_forward(h_ref, in.w, y_ref, rstd_ref, 1e-5f);

      Tensor h = poisoned({rows, dim}, dt), y = poisoned({rows, dim}, dt), rstd = poisoned({rows}, dt);
      ops::add_rmsnorm_forward(in.x, in.delta, in.w, h, y, rstd, 1e-5f);
      require_same(h, h_ref, "h");
      require_same(y, y_ref, "y");
      require_same(rstd, rstd_ref, "rstd");

      Tensor x = in.x.clone();  // h = x: the residual stream updated in place
      ops::add_rmsnorm_forward(x, in.delta, in.w, x, y, rstd, 1e-5f);
      require_same(x, h_ref, "h in place");
      require_same(y, y_ref, "y in place");
    }
  }
}

TEST_CASE("add + layernorm equals add then layernorm, bit for bit, also in place", "[kernels][cpu][fused]") {
  for (DType dt : k_float_types) {
    for (int64_t rows : {1, 7, 19}) {
      const int64_t dim = 19;
      NormInputs in = random_inputs(rows, dim, dt, 40 + rows);
      Tensor h_ref = poisoned({rows, dim}, dt), y_ref = poisoned({rows, dim}, dt);
      Tensor mean_ref = poisoned({rows}, dt), rstd_ref = poisoned({rows}, dt);
      ops::add(in.x, in.delta, h_ref);
      ops::layernorm_forward(h_ref, in.w, in.b, y_ref, mean_ref, rstd_ref, 1e-5f);

      Tensor h = poisoned({rows, dim}, dt), y = poisoned({rows, dim}, dt);
      Tensor mean = poisoned({rows}, dt), rstd = poisoned({rows}, dt);
      ops::add_layernorm_forward(in.x, in.delta, in.w, in.b, h, y, mean, rstd, 1e-5f);
      require_same(h, h_ref, "h");
      require_same(y, y_ref, "y");
      require_same(mean, mean_ref, "mean");
      require_same(rstd, rstd_ref, "rstd");

      Tensor x = in.x.clone();
      ops::add_layernorm_forward(x, in.delta, in.w, in.b, x, y, mean, rstd, 1e-5f);
      require_same(x, h_ref, "h in place");
      require_same(y, y_ref, "y in place");
    }
  }
}

TEST_CASE("norm backward with the residual gradient equals backward then accumulate", "[kernels][cpu][fused]") {
  for (DType dt : k_float_types) {
    for (int64_t rows : {1, 7, 19}) {
      const int64_t dim = 19;
      NormInputs in = random_inputs(rows, dim, dt, 60 + rows);
      Tensor y = Tensor::empty({rows, dim}, dt), mean = Tensor::empty({rows}, dt), rstd = Tensor::empty({rows}, dt);
      Tensor dy = random_tensor({rows, dim}, dt, 70 + rows);
      Tensor dres = random_tensor({rows, dim}, dt, 80 + rows);

      ops::rmsnorm_forward(in.x, in.w, y, rstd, 1e-5f);
      Tensor dx_ref = poisoned({rows, dim}, dt), dw_ref = random_tensor({dim}, dt, 90);
      ops::rmsnorm_backward(in.x, in.w, rstd, dy, dx_ref, dw_ref);
      ops::accumulate(dx_ref, dres);
      Tensor dx = poisoned({rows, dim}, dt), dw = random_tensor({dim}, dt, 90);
      ops::rmsnorm_backward(in.x, in.w, rstd, dy, dx, dw, dres);
      require_same(dx, dx_ref, "rmsnorm dx");
      require_same(dw, dw_ref, "rmsnorm dw");
      Tensor dx_in_place = dres.clone();  // dresidual = dx: accumulate into the residual gradient
      ops::rmsnorm_backward(in.x, in.w, rstd, dy, dx_in_place, dw, dx_in_place);
      require_same(dx_in_place, dx_ref, "rmsnorm dx in place");

      ops::layernorm_forward(in.x, in.w, in.b, y, mean, rstd, 1e-5f);
      Tensor db_ref = random_tensor({dim}, dt, 91), db = random_tensor({dim}, dt, 91);
      dw_ref = random_tensor({dim}, dt, 92);
      dw = random_tensor({dim}, dt, 92);
      ops::layernorm_backward(in.x, in.w, mean, rstd, dy, dx_ref, dw_ref, db_ref);
      ops::accumulate(dx_ref, dres);
      ops::layernorm_backward(in.x, in.w, mean, rstd, dy, dx, dw, db, dres);
      require_same(dx, dx_ref, "layernorm dx");
      require_same(dw, dw_ref, "layernorm dw");
      require_same(db, db_ref, "layernorm db");
    }
  }
}

TEST_CASE("fused norms name a bad residual operand", "[kernels][cpu][fused]") {
  const int64_t rows = 3, dim = 5;
  NormInputs in = random_inputs(rows, dim, DType::f32, 100);
  Tensor h = Tensor::empty({rows, dim}, DType::f32), y = Tensor::empty({rows, dim}, DType::f32);
  Tensor mean = Tensor::empty({rows}, DType::f32), rstd = Tensor::empty({rows}, DType::f32);
  Tensor short_delta = random_tensor({rows, dim - 1}, DType::f32, 101);
  REQUIRE_THROWS_WITH(ops::add_rmsnorm_forward(in.x, short_delta, in.w, h, y, rstd, 1e-5f),
                      Catch::Contains("add_rmsnorm delta"));
  Tensor f64_h = Tensor::empty({rows, dim}, DType::f64);
  REQUIRE_THROWS_WITH(ops::add_layernorm_forward(in.x, in.delta, in.w, in.b, f64_h, y, mean, rstd, 1e-5f),
                      Catch::Contains("add_layernorm h"));
  REQUIRE_THROWS_WITH(ops::add_rmsnorm_forward(in.x, Tensor(), in.w, h, y, rstd, 1e-5f),
                      Catch::Contains("add_rmsnorm delta is undefined"));
  Tensor dw = Tensor::zeros({dim}, DType::f32), db = Tensor::zeros({dim}, DType::f32);
  REQUIRE_THROWS_WITH(ops::rmsnorm_backward(in.x, in.w, rstd, in.delta, h, dw, short_delta),
                      Catch::Contains("rmsnorm dresidual"));
  REQUIRE_THROWS_WITH(ops::layernorm_backward(in.x, in.w, mean, rstd, in.delta, h, dw, db, short_delta),
                      Catch::Contains("layernorm dresidual"));
  // dx over dy or x: only dresidual may share dx's memory.
  Tensor dy = in.delta.clone(), x = in.x.clone();
  REQUIRE_THROWS_WITH(ops::rmsnorm_backward(in.x, in.w, rstd, dy, dy, dw),
                      Catch::Contains("rmsnorm_backward: dx overlaps dy"));
  REQUIRE_THROWS_WITH(ops::layernorm_backward(x, in.w, mean, rstd, in.delta, x, dw, db),
                      Catch::Contains("layernorm_backward: dx overlaps x"));
}
