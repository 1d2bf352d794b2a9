// MPI init/finalize with world and node-local ranks, and the job-wide abort used on failure.
// Errors on MPI_COMM_WORLD are switched to "return" so MPI_CHECK can report them as moe::Error.
#include "parallel/mpi_env.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "parallel/mpi_check.h"
#include "src/util/log.h"

namespace moe {

namespace detail {
std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}
}  // namespace detail

namespace {

bool mpi_usable() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

}  // namespace

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int initialized = 0;
  MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    // FUNNELED: only the main thread calls MPI (loader threads never do).
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    owns_mpi_ = true;
    if (provided < MPI_THREAD_FUNNELED) abort_job("MPI provides no MPI_THREAD_FUNNELED support");
  }
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node));
  MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node, &local_size_));
  MPI_CHECK(MPI_Comm_free(&node));
}

MpiEnv::~MpiEnv() {
  if (owns_mpi_ && mpi_usable()) MPI_Finalize();
}

void abort_job(const std::string& message) {
  // Several threads may fail at once; the first one reports, the others wait for the abort.
  static std::atomic<bool> reported{false};
  bool usable = mpi_usable();
  int rank = 0, size = 1;
  if (usable) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  if (!reported.exchange(true)) {
    log::write_file_only(log::Level::error, message);  // train.log ends with why the run ended
    std::fprintf(stderr, "[rank %d] error: %s\n", rank, message.c_str());
    std::fflush(stderr);
  }
  // One rank has no peers to stop: exit with the one line, without MPI_Abort's banner.
  if (usable && size > 1) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);  // never unwind into static destructors that might touch MPI
}

}  // namespace moe
