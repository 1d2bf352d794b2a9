// Per-expert selections on the GPU with a stable radix sort (CUB) of 64-bit keys: the expert in
// the high word, a priority in the low word (a descending score, or a position), so each expert's
// candidates come out in priority order with ties in input order, as the CPU reference breaks them.
// Nothing goes to the host: the dropped count stays on the device.
#include "kernels/cuda/capacity.h"

#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/runtime.h"

namespace moe::cuda {

namespace {

constexpr int k_threads = 256;
constexpr uint64_t k_no_expert = ~0ull;  // sorts after every real key

// A float's bits as an unsigned key that orders like the float, inverted: larger floats first.
__device__ uint32_t descending_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;
}

// Bits of a (expert < num_experts, 32-bit priority) key.
int key_bits(int64_t num_experts) {
  int bits = 32;
  while ((int64_t{1} << (bits - 32)) < num_experts) ++bits;
  return bits;
}

// Expert choice: pair n = t*E + e gets key (e, descending score), value t.
__global__ void expert_choice_keys_kernel(const float* scores, int64_t n, int num_experts, uint64_t* keys,
                                          int32_t* tokens, int32_t* ids, float* weights) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t e = i % num_experts;
    keys[i] = (static_cast<uint64_t>(e) << 32) | descending_key(scores[i]);
    tokens[i] = static_cast<int32_t>(i / num_experts);
    ids[i] = -1;
    weights[i] = 0.0f;
  }
}

// Sorted position p holds expert p / T's (p % T)-th best token: the first `capacity` are taken.
__global__ void expert_choice_take_kernel(const float* scores, const int32_t* sorted_tokens, int64_t tokens,
                                          int num_experts, int64_t capacity, int32_t* ids, float* weights) {
  const int64_t n = tokens * num_experts;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += stride) {
    const int64_t e = p / tokens, rank = p - e * tokens;
    if (rank >= capacity) continue;
    const int64_t i = static_cast<int64_t>(sorted_tokens[p]) * num_experts + e;
    ids[i] = static_cast<int32_t>(e);
    weights[i] = scores[i];
  }
}

// Capacity: slot n = t*k + s gets key (expert, priority), value n; slots without an expert sort last.
__global__ void capacity_keys_kernel(const int32_t* ids, const float* weights, int64_t tokens, int k,
                                     int num_experts, bool by_probability, uint64_t* keys, int32_t* slots,
                                     unsigned long long* bad) {
  const int64_t n = tokens * k;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int32_t e = ids[i];
    slots[i] = static_cast<int32_t>(i);
    if (e < 0 || e >= num_experts) {
      if (e != -1) *bad = (static_cast<unsigned long long>(i + 1) << 32) | static_cast<uint32_t>(e);
      keys[i] = k_no_expert;
      continue;
    }
    // by position: slot-major, then token
    const uint32_t priority = by_probability ? descending_key(weights[i])
                                             : static_cast<uint32_t>((i % k) * tokens + i / k);
    keys[i] = (static_cast<uint64_t>(e) << 32) | priority;
  }
}

// first[e] = the sorted position of expert e's first slot (where the expert changes).
__global__ void segment_starts_kernel(const uint64_t* keys, int64_t n, int32_t* first) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += stride) {
    if (keys[p] == k_no_expert) continue;
    const uint64_t e = keys[p] >> 32;
    if (p == 0 || (keys[p - 1] >> 32) != e) first[e] = static_cast<int32_t>(p);
  }
}

// Slots ranked at or past the capacity within their expert are dropped (id -1, weight 0).
__global__ void drop_kernel(const uint64_t* keys, const int32_t* sorted_slots, const int32_t* first, int64_t n,
                            int64_t capacity, int32_t* ids, float* weights, unsigned long long* dropped) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += stride) {
    if (keys[p] == k_no_expert) continue;
    if (p - first[keys[p] >> 32] < capacity) continue;
    const int32_t slot = sorted_slots[p];
    ids[slot] = -1;
    weights[slot] = 0.0f;
    atomicAdd(dropped, 1ull);
  }
}

// A stable radix sort of (keys, values) over the low `bits` bits, in scratch memory on the stream.
void sort_pairs(const uint64_t* keys_in, uint64_t* keys_out, const int32_t* values_in, int32_t* values_out,
                int64_t n, int bits, cudaStream_t stream) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, values_in, values_out, n, 0, bits,
                                             stream));
  Scratch temp(bytes, stream);
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.as<void>(), bytes, keys_in, keys_out, values_in, values_out, n, 0,
                                             bits, stream));
}

__global__ void expert_choice_backward_kernel(const int32_t* ids, const float* dweights, float* dscores, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (ids[i] >= 0) dscores[i] += dweights[i];
  }
}

}  // namespace

void expert_choice_forward(const float* scores, int32_t* ids, float* weights, int64_t tokens, int64_t num_experts,
                           int64_t capacity, cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && num_experts >= 1 && capacity >= 0, "expert_choice_forward: bad shape (tokens ", tokens,
            ", experts ", num_experts, ", capacity ", capacity, ")");
  const int64_t n = tokens * num_experts;
  if (n == 0) return;
  MOE_CHECK(n <= INT32_MAX, "expert_choice_forward: ", n, " token-expert pairs exceed i32 indices");
  // keys[n] u64, sorted keys[n] u64, tokens[n] and sorted tokens[n] i32
  Scratch scratch(static_cast<size_t>(n) * 24, stream);
  auto* keys = scratch.as<uint64_t>();
  auto* sorted_keys = keys + n;
  auto* token_of = reinterpret_cast<int32_t*>(sorted_keys + n);
  auto* sorted_tokens = token_of + n;
  const unsigned blocks = grid_for(n, k_threads);
  const int E = static_cast<int>(num_experts);
  expert_choice_keys_kernel<<<blocks, k_threads, 0, stream>>>(scores, n, E, keys, token_of, ids, weights);
  CUDA_CHECK_LAUNCH();
  sort_pairs(keys, sorted_keys, token_of, sorted_tokens, n, key_bits(num_experts), stream);
  expert_choice_take_kernel<<<blocks, k_threads, 0, stream>>>(scores, sorted_tokens, tokens, E, capacity, ids,
                                                               weights);
  CUDA_CHECK_LAUNCH();
}

void expert_choice_backward(const int32_t* ids, const float* dweights, float* dscores, int64_t n,
                            cudaStream_t stream) {
  MOE_CHECK(n >= 0, "expert_choice_backward: bad size ", n);
  if (n == 0) return;
  expert_choice_backward_kernel<<<grid_for(n, k_threads, 8192), k_threads, 0, stream>>>(ids, dweights, dscores, n);
  CUDA_CHECK_LAUNCH();
}

void apply_capacity(int32_t* ids, float* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                    kernels::DropOrder order, unsigned long long* dropped, unsigned long long* bad,
                    cudaStream_t stream) {
  MOE_CHECK(tokens >= 0 && k >= 1 && num_experts >= 1 && capacity >= 0, "apply_capacity: bad shape (tokens ", tokens,
            ", k ", k, ", experts ", num_experts, ", capacity ", capacity, ")");
  const int64_t n = tokens * k;
  MOE_CHECK(n <= INT32_MAX, "apply_capacity: ", n, " slots exceed i32 indices");
  CUDA_CHECK(cudaMemsetAsync(dropped, 0, sizeof(*dropped), stream));
  if (bad != nullptr) CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(*bad), stream));
  if (n == 0) return;
  // keys, sorted keys [n] u64; slots, sorted slots [n] i32; first[E] i32
  Scratch scratch(static_cast<size_t>(n) * 24 + static_cast<size_t>(num_experts) * 4, stream);
  auto* keys = scratch.as<uint64_t>();
  auto* sorted_keys = keys + n;
  auto* slots = reinterpret_cast<int32_t*>(sorted_keys + n);
  auto* sorted_slots = slots + n;
  auto* first = sorted_slots + n;
  Scratch no_report(bad == nullptr ? sizeof(unsigned long long) : 0, stream);
  unsigned long long* bad_word = bad != nullptr ? bad : no_report.as<unsigned long long>();
  const unsigned blocks = grid_for(n, k_threads);
  capacity_keys_kernel<<<blocks, k_threads, 0, stream>>>(ids, weights, tokens, static_cast<int>(k),
                                                         static_cast<int>(num_experts),
                                                         order == kernels::DropOrder::by_probability, keys, slots,
                                                         bad_word);
  CUDA_CHECK_LAUNCH();
  sort_pairs(keys, sorted_keys, slots, sorted_slots, n, 64, stream);
  segment_starts_kernel<<<blocks, k_threads, 0, stream>>>(sorted_keys, n, first);
  CUDA_CHECK_LAUNCH();
  drop_kernel<<<blocks, k_threads, 0, stream>>>(sorted_keys, sorted_slots, first, n, capacity, ids, weights, dropped);
  CUDA_CHECK_LAUNCH();
}

int64_t apply_capacity(int32_t* ids, float* weights, int64_t tokens, int64_t k, int64_t num_experts, int64_t capacity,
                       kernels::DropOrder order, cudaStream_t stream) {
  Scratch words(2 * sizeof(unsigned long long), stream);
  auto* dropped = words.as<unsigned long long>();
  apply_capacity(ids, weights, tokens, k, num_experts, capacity, order, dropped, dropped + 1, stream);
  unsigned long long host[2] = {0, 0};
  CUDA_CHECK(cudaMemcpyAsync(host, dropped, sizeof(host), cudaMemcpyDeviceToHost, stream));
  wait_stream(stream);
  const auto slot = static_cast<int64_t>(host[1] >> 32) - 1;  // the word holds (slot + 1, id)
  MOE_CHECK(host[1] == 0, "apply_capacity: expert id ", static_cast<int32_t>(host[1] & 0xffffffffull), " of token ",
            slot / k, " (slot ", slot % k, ") is outside [0,", num_experts, ")");
  return static_cast<int64_t>(host[0]);
}

}  // namespace moe::cuda
