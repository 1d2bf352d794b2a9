// Dispatcher benchmark: random routing at the config's shape, timed over iterations after
// warm-up, bytes counted from the send counts the dispatcher exchanged; dispatch and combine
// alone, and the shared experts' compute run after the dispatch or during it (start/finish).
#include "src/tools/bench_dispatch.h"

#include <chrono>
#include <random>

#include "experts/shared_experts.h"
#include "parallel/alltoall_dispatcher.h"
#include "src/config/moe_shape.h"
#include "src/ops/ops.h"
#include "src/tools/bench_timing.h"

namespace moe {

namespace {

// Median milliseconds of fn over `iterations` calls, each started together on every EP rank
// (a barrier before each, outside the timed interval), after `warmup` calls.
template <class Fn>
double aligned_median_ms(Communicator& ep, int64_t warmup, int64_t iterations, Fn&& fn) {
  for (int64_t i = 0; i < warmup; ++i) fn();
  DeviceTimer timer(ep.device());
  std::vector<double> ms;
  for (int64_t i = 0; i < iterations; ++i) {
    ep.barrier();
    timer.start();
    fn();
    timer.stop();
    ms.push_back(timer.elapsed_ms());
  }
  return median_of(ms);
}

// The config's shared experts (one expert of d_expert width when it has none), for the overlap.
std::unique_ptr<SharedExperts> bench_shared_experts(const Config& config, const MoeShape& shape, ParamStore& store,
                                                    Device device, DType dtype) {
  const int64_t num_shared = shape.num_shared > 0 ? shape.num_shared : 1;
  const int64_t width = shape.d_shared > 0 ? shape.d_shared : shape.d_expert;
  const std::string act = config.moe.activation.empty() ? config.model.activation : config.moe.activation;
  auto shared = std::make_unique<SharedExperts>(store, "shared", config.model.d_model, num_shared, width,
                                                ops::activation_from_name(act), config.moe.shared_gate, 0.02, 0.02);
  store.allocate(device, dtype);
  store.initialize(config.train.seed);
  return shared;
}

}  // namespace

DispatchBenchResult bench_dispatch(const Config& config, Communicator& ep, int64_t warmup, int64_t iterations,
                                   uint64_t seed) {
  const int64_t tokens = config.train.micro_batch_size * config.model.seq_len;
  const MoeShape shape = moe_shape(config.moe);
  const int64_t experts = shape.num_experts, k = shape.top_k, d = config.model.d_model;
  MOE_CHECK(experts > 0, "bench dispatch needs an MoE config (moe.num_experts > 0)");
  const Device device = ep.device();
  const DType dtype = device.is_cuda() ? DType::bf16 : DType::f32;  // the training compute dtype

  std::mt19937_64 rng(seed + static_cast<uint64_t>(ep.rank()));
  std::vector<int32_t> ids(static_cast<size_t>(tokens * k));
  for (int64_t t = 0; t < tokens; ++t) {  // k distinct experts per token
    for (int64_t s = 0; s < k; ++s) {
      int32_t e;
      bool taken;
      do {
        e = static_cast<int32_t>(rng() % static_cast<uint64_t>(experts));
        taken = false;
        for (int64_t q = 0; q < s; ++q) taken |= ids[static_cast<size_t>(t * k + q)] == e;
      } while (taken);
      ids[static_cast<size_t>(t * k + s)] = e;
    }
  }
  Tensor id_tensor = Tensor::from_vector(ids, {tokens, k}, DType::i32, device);
  std::vector<float> values(static_cast<size_t>(tokens * d));
  for (auto& v : values) v = static_cast<float>(rng() % 1000) / 1000.0f;
  Tensor x = Tensor::from_vector(values, {tokens, d}, dtype, device);
  Tensor weights = Tensor::from_vector(std::vector<float>(static_cast<size_t>(tokens * k), 1.0f / k), {tokens, k},
                                       DType::f32, device);
  AllToAllDispatcher dispatcher(experts, ep);

  DispatchBenchResult r;
  auto run = [&] {
    DispatchSaved saved;
    Tensor local = dispatcher.dispatch(x, id_tensor, saved);
    Tensor out = dispatcher.combine(saved, local, weights);
    int64_t sent = 0, received = 0;
    for (int q = 0; q < ep.size(); ++q) {
      if (q == ep.rank()) continue;
      sent += saved.send_counts[static_cast<size_t>(q)];
      received += saved.recv_counts[static_cast<size_t>(q)];
    }
    r.rows_sent_remote = sent;
    r.rows_received_remote = received;
    return out;
  };
  for (int64_t i = 0; i < warmup; ++i) run();
  cuda_synchronize();
  ep.barrier();
  auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) run();
  cuda_synchronize();
  ep.barrier();
  r.seconds_per_iteration =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / static_cast<double>(iterations);

  // The phases alone, and the shared experts after the dispatch or while its rows travel.
  ParamStore store;
  auto shared = bench_shared_experts(config, shape, store, device, dtype);
  DispatchSaved saved;
  Tensor local = dispatcher.dispatch(x, id_tensor, saved);
  r.dispatch_ms = aligned_median_ms(ep, warmup, iterations, [&] { local = dispatcher.dispatch(x, id_tensor, saved); });
  r.combine_ms = aligned_median_ms(ep, warmup, iterations, [&] { dispatcher.combine(saved, local, weights); });
  SharedExpertsSaved shared_saved;
  r.shared_ms = aligned_median_ms(ep, warmup, iterations, [&] { shared->forward(x, shared_saved); });
  r.sequential_ms = aligned_median_ms(ep, warmup, iterations, [&] {
    DispatchSaved s;
    Tensor rows = dispatcher.dispatch(x, id_tensor, s);
    shared->forward(x, shared_saved);
    dispatcher.combine(s, rows, weights);
  });
  r.overlapped_ms = aligned_median_ms(ep, warmup, iterations, [&] {
    DispatchSaved s;
    dispatcher.dispatch_start(x, id_tensor, s);
    shared->forward(x, shared_saved);
    Tensor rows = dispatcher.dispatch_finish(s);
    dispatcher.combine(s, rows, weights);
  });
  // Dispatch sends this rank's remote rows out; combine sends back the outputs of the rows it received.
  const int64_t row_bytes = d * static_cast<int64_t>(dtype_size(dtype));
  r.bytes_out = (r.rows_sent_remote + r.rows_received_remote) * row_bytes;
  r.gb_per_s = static_cast<double>(r.bytes_out) / r.seconds_per_iteration / 1e9;
  return r;
}

nlohmann::json to_json(const DispatchBenchResult& r) {
  return {{"dispatch_combine_ms", r.seconds_per_iteration * 1000.0},
          {"dispatch_ms", r.dispatch_ms},
          {"combine_ms", r.combine_ms},
          {"shared_experts_ms", r.shared_ms},
          {"sequential_ms", r.sequential_ms},
          {"overlapped_ms", r.overlapped_ms},
          {"bytes_out_per_rank", r.bytes_out},
          {"alltoall_gb_per_s_per_rank", r.gb_per_s},
          {"rows_sent_remote", r.rows_sent_remote},
          {"rows_received_remote", r.rows_received_remote}};
}

}  // namespace moe
