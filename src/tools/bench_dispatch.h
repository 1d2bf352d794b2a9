// `moe bench dispatch`: the expert-parallel dispatcher alone (sort, all-to-all, permute, and
// back) at a config's token volume, reporting the all-to-all bandwidth it achieves per rank.
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "parallel/communicator.h"
#include "src/config/config.h"

namespace moe {

struct DispatchBenchResult {
  double seconds_per_iteration = 0;  // dispatch + combine, forward only
  int64_t bytes_out = 0;             // bytes this rank sent to other EP ranks per iteration (both all-to-alls)
  double gb_per_s = 0;               // bytes_out / seconds_per_iteration / 1e9
  int64_t rows_sent_remote = 0;      // per dispatch: rows that left this rank
  int64_t rows_received_remote = 0;  // per dispatch: rows that came from other ranks
  // Medians over the iterations, each started together on every rank (milliseconds):
  double dispatch_ms = 0, combine_ms = 0;  // each phase alone
  double shared_ms = 0;                    // the shared experts' forward alone
  // dispatch, then the shared experts, then combine; and the same with the shared experts
  // between dispatch_start and dispatch_finish (parallel.a2a_overlap)
  double sequential_ms = 0, overlapped_ms = 0;
};

// T = micro_batch_size * seq_len tokens of width d_model per rank, routed uniformly at random
// to top_k of the (granularity-scaled) experts, over the EP group `ep` (on the communicator's
// device, the run's compute dtype). The shared experts are the config's (one expert of d_expert
// width when it has none).
DispatchBenchResult bench_dispatch(const Config& config, Communicator& ep, int64_t warmup, int64_t iterations,
                                   uint64_t seed);
nlohmann::json to_json(const DispatchBenchResult& r);

}  // namespace moe
