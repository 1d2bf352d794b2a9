// Catch2 listener linked into every MPI test: MPI lives for the whole test run, and a failed
// assertion on any rank aborts the job with the failure text instead of hanging its peers.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include <memory>
#include <sstream>

#include "parallel/mpi_env.h"

namespace moe::test {

class MpiListener : public Catch::TestEventListenerBase {
 public:
  using TestEventListenerBase::TestEventListenerBase;

  void testRunStarting(const Catch::TestRunInfo& info) override { env_ = std::make_unique<MpiEnv>(); }
  void testRunEnded(const Catch::TestRunStats& stats) override { env_.reset(); }

  bool assertionEnded(const Catch::AssertionStats& stats) override {
    const Catch::AssertionResult& result = stats.assertionResult;
    if (result.isOk()) return true;
    std::ostringstream text;
    text << "test failed at " << result.getSourceInfo().file << ":" << result.getSourceInfo().line << ": "
         << result.getExpressionInMacro();
    if (result.hasExpandedExpression()) text << " with " << result.getExpandedExpression();
    if (result.hasMessage()) text << " (" << result.getMessage() << ")";
    for (const auto& info : stats.infoMessages) text << " [" << info.message << "]";
    abort_job(text.str());
  }

 private:
  std::unique_ptr<MpiEnv> env_;
};

CATCH_REGISTER_LISTENER(MpiListener)

}  // namespace moe::test
