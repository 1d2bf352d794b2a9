// A libFuzzer executable for one entry point, chosen at compile time by MOE_FUZZ_TARGET (a name
// in fuzz_targets()). Built only with MOE_FUZZ=ON and clang; scripts/fuzz.sh runs them.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const moe::fuzz::FuzzTarget* target = [] {
    for (const auto& t : moe::fuzz::fuzz_targets()) {
      if (std::strcmp(t.name, MOE_FUZZ_TARGET) == 0) return &t;
    }
    std::abort();  // a build error: MOE_FUZZ_TARGET names no entry point
  }();
  target->run(data, size);
  return 0;
}
