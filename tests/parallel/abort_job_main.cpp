// A small MPI program for the abort test: one rank throws while the others wait in a barrier.
// Without abort_job the waiting ranks would hang forever; with it the whole job exits non-zero.
#include <cstdio>
#include <cstdlib>

#include "parallel/communicator.h"
#include "parallel/mpi_env.h"

namespace {

void load_shard(int rank) { MOE_CHECK(false, "rank ", rank, " failed on purpose"); }

}  // namespace

// Usage: abort_job_main FAILING_RANK
int main(int argc, char** argv) {
  moe::MpiEnv env(&argc, &argv);
  int failing_rank = argc > 1 ? std::atoi(argv[1]) : 1;
  return moe::run_or_abort([&] {
    auto comm = moe::make_world_communicator(moe::Device::cpu());
    if (comm->rank() == failing_rank) load_shard(comm->rank());
    comm->barrier();
    std::printf("rank %d passed the barrier\n", comm->rank());
    return 0;
  });
}
