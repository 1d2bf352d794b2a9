// The MPI process environment: RAII init/finalize, world and node-local ranks, and the one
// way a failing rank ends the whole job (abort_job) instead of leaving its peers hanging.
#pragma once

#include <exception>
#include <string>

namespace moe {

// One per process, created at the top of main (before any communicator) and destroyed after
// the last one. Works under mpirun and as a plain process (singleton init: one rank).
// If MPI is already initialized, it neither initializes nor finalizes it.
class MpiEnv {
 public:
  MpiEnv(int* argc, char*** argv);
  MpiEnv() : MpiEnv(nullptr, nullptr) {}
  ~MpiEnv();
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // Rank and count of the ranks on this node (MPI_COMM_TYPE_SHARED); choose the GPU with
  // local_rank() % number of visible GPUs.
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

 private:
  bool owns_mpi_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
};

// Prints "[rank R] error: <message>" once to stderr and ends every rank of the job with exit
// code 1 (MPI_Abort). With one rank, or without MPI (not yet initialized, or finalized), it
// exits this process with code 1.
// `main` calls this from its catch block; the ranks blocked in collectives die with it.
[[noreturn]] void abort_job(const std::string& message);

// Runs body() and returns its exit code; an exception escaping it goes to abort_job.
template <typename Body>
int run_or_abort(Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    abort_job(e.what());
  } catch (...) {
    abort_job("unknown exception");
  }
}

}  // namespace moe
