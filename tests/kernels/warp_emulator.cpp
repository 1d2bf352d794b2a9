// Fiber-based emulation of a CUDA block for the flash-attention kernel bodies (see the header):
// a scheduler runs every thread up to its next collective or barrier, then completes those.
#include "tests/kernels/warp_emulator.h"

#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>

namespace moe::test::emu {
namespace {

using moe::cuda::flash::bf16_bits;

constexpr int k_warp = 32;
constexpr size_t k_stack_bytes = 256 * 1024;
constexpr size_t k_guard_bytes = 4096;  // canary after shared memory: overflowing writes show
constexpr unsigned char k_canary = 0xa5;

enum class Op { run, ldsm, ldsm_trans, mma, shfl, barrier, done, failed };

struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
  bool valid;
  void land() const { valid ? std::memcpy(dst, src, bytes) : std::memset(dst, 0, bytes); }
};


struct Thread {
  ucontext_t ctx{};
  std::unique_ptr<char[]> stack;
  int tid = 0;
  Op op = Op::run;
  // Operands of the pending collective, and its results.
  const bf16_bits* addr = nullptr;
  uint32_t a[4]{}, b[2]{}, r[4]{};
  float c[4]{}, value = 0.0f;
  int lane_mask = 0;
  // cp.async: copies not yet committed, then committed groups oldest first.
  std::vector<Copy> open;
  std::vector<std::vector<Copy>> groups;
};

struct BlockState {
  std::vector<Thread> threads;
  ucontext_t scheduler{};
  char* smem = nullptr;
  size_t smem_bytes = 0;
  const std::vector<Range>* globals = nullptr;
  std::mt19937_64 rng;
  Dim3 block;
  const std::function<void(Dim3, int, char*)>* body = nullptr;
  std::string error;
};

BlockState* g_block = nullptr;
Thread* g_current = nullptr;

[[noreturn]] void fail(const std::string& what) {
  g_block->error = "thread " + std::to_string(g_current->tid) + " of block (" + std::to_string(g_block->block.x) +
                   "," + std::to_string(g_block->block.y) + "," + std::to_string(g_block->block.z) + "): " + what;
  g_current->op = Op::failed;
  swapcontext(&g_current->ctx, &g_block->scheduler);
  std::abort();  // a failed thread is never resumed
}

void yield(Op op) {
  g_current->op = op;
  swapcontext(&g_current->ctx, &g_block->scheduler);
}

void check_shared(const void* p, size_t bytes, size_t align, const char* what) {
  const char* c = static_cast<const char*>(p);
  if (c < g_block->smem || c + bytes > g_block->smem + g_block->smem_bytes) fail(std::string(what) + ": outside shared memory");
  if ((c - g_block->smem) % align != 0) fail(std::string(what) + ": misaligned shared address");
}

void check_global(const void* p, size_t bytes, const char* what) {
  const char* c = static_cast<const char*>(p);
  for (const Range& r : *g_block->globals) {
    const char* begin = static_cast<const char*>(r.begin);
    if (c >= begin && c + bytes <= begin + r.bytes) return;
  }
  fail(std::string(what) + ": outside every global buffer");
}

// Issues a cp.async copy: it lands now or when a wait covers it, at random.
void issue_copy(const Copy& copy) {
  check_shared(copy.dst, copy.bytes, copy.bytes, "cp.async destination");
  if (reinterpret_cast<uintptr_t>(copy.src) % copy.bytes != 0) fail("cp.async: misaligned global source");
  check_global(copy.src, copy.bytes, "cp.async source");
  if (g_block->rng() % 2 == 0) {
    copy.land();
  } else {
    g_current->open.push_back(copy);
  }
}

void thread_entry() {
  Thread* self = g_current;
  (*g_block->body)(g_block->block, self->tid, g_block->smem);
  self->op = Op::done;
  swapcontext(&self->ctx, &g_block->scheduler);
}

float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
float low_of(uint32_t packed) { return bits_to_float(packed << 16); }
float high_of(uint32_t packed) { return bits_to_float(packed & 0xffff0000u); }

// ldmatrix x4: lane l's r[i] from the row addresses of lanes 8i..8i+7 (see flash_attention_ptx.cuh).
void resolve_ldsm(Thread* lanes, bool trans) {
  for (int l = 0; l < k_warp; ++l) {
    for (int i = 0; i < 4; ++i) {
      bf16_bits lo, hi;
      if (!trans) {
        const bf16_bits* row = lanes[8 * i + l / 4].addr;
        lo = row[2 * (l % 4)];
        hi = row[2 * (l % 4) + 1];
      } else {
        lo = lanes[8 * i + 2 * (l % 4)].addr[l / 4];
        hi = lanes[8 * i + 2 * (l % 4) + 1].addr[l / 4];
      }
      lanes[l].r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
  }
}

// m16n8k16 with the PTX fragment layouts; products summed in double, rounded once to float.
void resolve_mma(Thread* lanes) {
  double a[16][16], b[16][8], c[16][8];
  for (int l = 0; l < k_warp; ++l) {
    const int g = l / 4, t = l % 4;
    const Thread& x = lanes[l];
    const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
    for (int i = 0; i < 4; ++i) {
      a[rows[i]][cols[i]] = low_of(x.a[i]);
      a[rows[i]][cols[i] + 1] = high_of(x.a[i]);
    }
    b[2 * t][g] = low_of(x.b[0]);
    b[2 * t + 1][g] = high_of(x.b[0]);
    b[2 * t + 8][g] = low_of(x.b[1]);
    b[2 * t + 9][g] = high_of(x.b[1]);
    c[g][2 * t] = x.c[0];
    c[g][2 * t + 1] = x.c[1];
    c[g + 8][2 * t] = x.c[2];
    c[g + 8][2 * t + 1] = x.c[3];
  }
  for (int l = 0; l < k_warp; ++l) {
    const int g = l / 4, t = l % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
      double sum = c[rows[i]][cols[i]];
      for (int k = 0; k < 16; ++k) sum += a[rows[i]][k] * b[k][cols[i]];
      lanes[l].c[i] = static_cast<float>(sum);
    }
  }
}

bool is_collective(Op op) { return op == Op::ldsm || op == Op::ldsm_trans || op == Op::mma || op == Op::shfl; }

enum class WarpState { runnable, at_barrier, done };

// Runs the lanes of warp w (in shuffled order) until none can run, then completes the collective
// they all reached. Returns where the warp stands; throws if its lanes diverged.
WarpState step_warp(BlockState& st, int w) {
  Thread* lanes = &st.threads[static_cast<size_t>(w) * k_warp];
  int order[k_warp];
  for (int l = 0; l < k_warp; ++l) order[l] = l;
  std::shuffle(order, order + k_warp, st.rng);
  for (int l : order) {
    if (lanes[l].op != Op::run) continue;
    g_current = &lanes[l];
    swapcontext(&st.scheduler, &g_current->ctx);
    if (g_current->op == Op::failed) throw std::runtime_error(st.error);
  }
  const Op op = lanes[0].op;
  for (int l = 0; l < k_warp; ++l) {
    if (lanes[l].op != op || (op == Op::shfl && lanes[l].lane_mask != lanes[0].lane_mask)) {
      throw std::runtime_error("warp " + std::to_string(w) + ": lanes reached different collectives or barriers");
    }
  }
  switch (op) {
    case Op::barrier: return WarpState::at_barrier;
    case Op::done: return WarpState::done;
    case Op::ldsm: resolve_ldsm(lanes, false); break;
    case Op::ldsm_trans: resolve_ldsm(lanes, true); break;
    case Op::mma: resolve_mma(lanes); break;
    default: {
      float values[k_warp];
      for (int l = 0; l < k_warp; ++l) values[l] = lanes[l].value;
      for (int l = 0; l < k_warp; ++l) lanes[l].value = values[l ^ lanes[l].lane_mask];
    }
  }
  for (int l = 0; l < k_warp; ++l) lanes[l].op = Op::run;
  return WarpState::runnable;
}

// Warps advance independently: a random runnable warp runs a random burst of collectives (up
// to its next barrier), so one warp can get far ahead of another, as on the GPU; a barrier opens
// once every warp waits at it.
void run_block(BlockState& st) {
  std::memset(st.smem, 0xff, st.smem_bytes);
  std::memset(st.smem + st.smem_bytes, k_canary, k_guard_bytes);
  for (Thread& t : st.threads) {
    t.op = Op::run;
    t.open.clear();
    t.groups.clear();
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = t.stack.get();
    t.ctx.uc_stack.ss_size = k_stack_bytes;
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, thread_entry, 0);
  }
  const int num_warps = static_cast<int>(st.threads.size()) / k_warp;
  std::vector<WarpState> state(static_cast<size_t>(num_warps), WarpState::runnable);
  std::vector<int> runnable;
  for (;;) {
    runnable.clear();
    int at_barrier = 0, done = 0;
    for (int w = 0; w < num_warps; ++w) {
      if (state[w] == WarpState::runnable) runnable.push_back(w);
      at_barrier += state[w] == WarpState::at_barrier ? 1 : 0;
      done += state[w] == WarpState::done ? 1 : 0;
    }
    if (done == num_warps) break;
    if (runnable.empty()) {
      if (done > 0) throw std::runtime_error("a barrier some warps exited without reaching");
      for (Thread& t : st.threads) t.op = Op::run;  // every warp waits at the barrier: open it
      std::fill(state.begin(), state.end(), WarpState::runnable);
      continue;
    }
    const int w = runnable[st.rng() % runnable.size()];
    const int burst = 1 + static_cast<int>(st.rng() % 64);
    for (int i = 0; i < burst && state[w] == WarpState::runnable; ++i) state[w] = step_warp(st, w);
  }
  for (size_t i = 0; i < k_guard_bytes; ++i) {
    if (static_cast<unsigned char>(st.smem[st.smem_bytes + i]) != k_canary) {
      throw std::runtime_error("a write past the end of shared memory");
    }
  }
}

}  // namespace

void run_grid(Dim3 grid, int threads, size_t smem_bytes, const std::vector<Range>& globals, uint64_t seed,
              const std::function<void(Dim3 block, int tid, char* smem)>& body) {
  if (threads <= 0 || threads % k_warp != 0) throw std::runtime_error("threads must be a multiple of 32");
  BlockState st;
  st.threads.resize(static_cast<size_t>(threads));
  for (int i = 0; i < threads; ++i) {
    st.threads[static_cast<size_t>(i)].tid = i;
    st.threads[static_cast<size_t>(i)].stack = std::make_unique<char[]>(k_stack_bytes);
  }
  std::vector<char> smem_storage(smem_bytes + k_guard_bytes + 128);
  st.smem = smem_storage.data() + (128 - reinterpret_cast<uintptr_t>(smem_storage.data()) % 128) % 128;
  st.smem_bytes = smem_bytes;
  st.globals = &globals;
  st.rng.seed(seed);
  st.body = &body;
  g_block = &st;
  for (int z = 0; z < grid.z; ++z) {
    for (int y = 0; y < grid.y; ++y) {
      for (int x = 0; x < grid.x; ++x) {
        st.block = {x, y, z};
        run_block(st);
      }
    }
  }
  g_block = nullptr;
}

}  // namespace moe::test::emu

namespace moe::cuda::flash {

using moe::test::emu::check_global;
using moe::test::emu::check_shared;
using moe::test::emu::g_block;
using moe::test::emu::g_current;
using moe::test::emu::Op;
using moe::test::emu::yield;

void ldsm_x4(uint32_t (&r)[4], const bf16_bits* smem) {
  check_shared(smem, 16, 16, "ldmatrix");
  g_current->addr = smem;
  yield(Op::ldsm);
  std::copy(g_current->r, g_current->r + 4, r);
}

void ldsm_x4_trans(uint32_t (&r)[4], const bf16_bits* smem) {
  check_shared(smem, 16, 16, "ldmatrix.trans");
  g_current->addr = smem;
  yield(Op::ldsm_trans);
  std::copy(g_current->r, g_current->r + 4, r);
}

void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  std::copy(a, a + 4, g_current->a);
  g_current->b[0] = b0;
  g_current->b[1] = b1;
  std::copy(d, d + 4, g_current->c);
  yield(Op::mma);
  std::copy(g_current->c, g_current->c + 4, d);
}

void cp_async_16(bf16_bits* smem, const bf16_bits* gmem, bool valid) {
  moe::test::emu::issue_copy({smem, gmem, 16, valid});
}

void cp_async_4(void* smem, const void* gmem, bool valid) { moe::test::emu::issue_copy({smem, gmem, 4, valid}); }

void cp_async_commit() {
  g_current->groups.push_back(std::move(g_current->open));
  g_current->open.clear();
}

void cp_async_wait_pending(int pending) {
  auto& groups = g_current->groups;
  while (static_cast<int>(groups.size()) > pending) {
    for (const auto& c : groups.front()) c.land();
    groups.erase(groups.begin());
  }
}

void sync_block() { yield(Op::barrier); }

float shfl_xor(float v, int lane_mask) {
  g_current->value = v;
  g_current->lane_mask = lane_mask;
  yield(Op::shfl);
  return g_current->value;
}

void atomic_add_f32x2(float* p, float a, float b) {
  check_global(p, 8, "atomic add of two floats");
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) moe::test::emu::fail("atomic add of two floats: misaligned address");
  p[0] += a;  // fibers run one at a time
  p[1] += b;
}

uint32_t pack_bf16x2(float lo, float hi) {
  auto round = [](float x) -> uint32_t {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    if (std::isnan(x)) return 0x7fc0u;
    return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  };
  return round(lo) | (round(hi) << 16);
}

float bf16_to_float(bf16_bits x) { return moe::test::emu::bits_to_float(static_cast<uint32_t>(x) << 16); }

}  // namespace moe::cuda::flash
