// The error messages of MOE_CHECK: their arguments joined as streamed, a NaN as "nan" whatever its
// sign bit (the order of a sum sets it, so a message must not depend on it).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "src/util/check.h"

using namespace moe;
using Catch::Contains;

TEST_CASE("check messages join their arguments and print any NaN as nan", "[util]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const float negative_nan = -std::numeric_limits<float>::quiet_NaN();
  REQUIRE(std::signbit(negative_nan));
  REQUIRE(detail::concat("loss is ", nan, ", then ", negative_nan, " at step ", 3) ==
          "loss is nan, then nan at step 3");
  REQUIRE(detail::concat("inf ", std::numeric_limits<double>::infinity(), " and ", -0.5, " and ", 'c') ==
          "inf inf and -0.5 and c");
  auto fail = [&] { MOE_CHECK(false, "value is ", -nan); };
  REQUIRE_THROWS_WITH(fail(), Contains("value is nan"));
}
