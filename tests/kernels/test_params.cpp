// The kernels' parameter header: one definition of each POD type, shared by the ops layer,
// the CPU reference and the CUDA kernels, and a header nvcc can compile (no includes but <cstdint>).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <string>
#include <type_traits>

#include "kernels/params.h"
#include "src/ops/ops.h"

namespace moe {
namespace {

// The ops layer's types are the kernels' own, not copies that a backend would have to map.
static_assert(std::is_same_v<ops::Activation, kernels::Activation>);
static_assert(std::is_same_v<ops::AttentionShape, kernels::AttentionShape>);
static_assert(std::is_same_v<ops::TopKOptions, kernels::TopKOptions>);
static_assert(std::is_same_v<ops::ScoreFunction, kernels::ScoreFunction>);
static_assert(std::is_same_v<ops::DropOrder, kernels::DropOrder>);
static_assert(std::is_same_v<ops::AdamWParams, kernels::AdamWParams>);

// Kernels copy them by value to the device: plain data only.
template <typename T>
constexpr bool is_pod_param = std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T>;
static_assert(is_pod_param<kernels::AttentionShape> && is_pod_param<kernels::TopKOptions> &&
              is_pod_param<kernels::AdamWParams>);

}  // namespace

TEST_CASE("kernels/params.h includes nothing but <cstdint>", "[kernels][params]") {
  const char* root = std::getenv("MOE_SOURCE_DIR");
  REQUIRE(root != nullptr);
  std::ifstream in(std::string(root) + "/kernels/params.h");
  REQUIRE(in.good());
  int includes = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("#include", 0) != 0) continue;
    ++includes;
    INFO(line);
    CHECK(line == "#include <cstdint>");
  }
  CHECK(includes == 1);
}

TEST_CASE("gated activations and renormalising routers, as the kernels decide them", "[kernels][params]") {
  using kernels::Activation;
  static_assert(kernels::is_gated(Activation::geglu) && kernels::is_gated(Activation::swiglu));
  static_assert(!kernels::is_gated(Activation::relu) && !kernels::is_gated(Activation::gelu));
  CHECK(ops::activation_from_name("swiglu") == Activation::swiglu);

  kernels::TopKOptions o;
  CHECK(!kernels::renormalizes(o));
  o.renormalize = true;
  CHECK(kernels::renormalizes(o));
  o.softmax_after_topk = true;  // Mixtral's weights are a softmax of the selected logits instead
  CHECK(!kernels::renormalizes(o));
  o = kernels::TopKOptions{};
  o.score = kernels::ScoreFunction::sigmoid;  // sigmoid routers always renormalise
  CHECK(kernels::renormalizes(o));
}

}  // namespace moe
