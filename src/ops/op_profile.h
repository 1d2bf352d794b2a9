// Where a step's device time goes: every op (and communicator call) is timed per kind between
// CUDA events on the compute stream (host clock on the CPU) while a profile is installed.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "src/tensor/tensor.h"

namespace moe::ops {

enum class OpKind : int {
  gemm, attention_forward, attention_backward, norm, activation, elementwise, embedding, loss, routing,
  permute, optimizer, communication, count
};
const char* op_kind_name(OpKind kind);

class OpProfile {
 public:
  OpProfile();
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  // Milliseconds per kind over everything recorded since the last reset (waits for the device).
  std::map<std::string, double> millis_by_kind();
  // The same per op: the name each scope was given (an op's own function name, see run_on), or
  // its kind's name where it was given none.
  std::map<std::string, double> millis_by_op();
  // Host milliseconds inside each op's scope, per op name: on CUDA enqueueing it (its checks,
  // allocations and launches) plus any time blocked on a full launch queue or waiting for the
  // device, so only a host-bound run (a tiny batch) reads the host's own cost.
  std::map<std::string, double> host_millis_by_op();
  int64_t ops() const { return num_ops_; }
  void reset();

  // Used by OpScope.
  void begin(OpKind kind, bool on_cuda, const char* name);
  void end();

 private:
  std::vector<double> millis();  // per record, in order
  std::map<std::string, double> sum_by_op(const std::vector<double>& ms);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t num_ops_ = 0;
};

// Host waits for the device so far (0 on the CPU): each one stalls the step's launch queue.
int64_t host_waits();
// Seconds the host spent in those waits so far (0 on the CPU).
double host_wait_seconds();

// An op's name from its function's signature as the compiler spells it
// ("void moe::ops::grouped_matmul(const moe::Tensor&, ...)" -> "grouped_matmul").
std::string op_name_from_signature(const std::string& signature);

// Installs `profile` for this process's ops; nullptr turns timing off (the default: no cost).
void set_op_profile(OpProfile* profile);

// Times its lifetime as one op of `kind` on the device of `on`, under `name` (a string that lives
// as long as the program, or nullptr for the kind's name). Nested scopes count once (the
// outermost), so an op that calls another op is not counted twice.
class OpScope {
 public:
  OpScope(OpKind kind, const Tensor& on, const char* name = nullptr);
  ~OpScope();
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  bool counted_ = false;  // a profile was installed at construction
  bool active_ = false;   // the outermost scope: it times
};

}  // namespace moe::ops
