// Op timing for `moe bench train --breakdown`: pairs of CUDA events per op, read back once at the
// end (no host wait between ops), or the host clock for CPU ops (they run synchronously); the host
// clock also times every op's scope on the host (on CUDA, enqueueing it).
#include "src/ops/op_profile.h"

#include <chrono>
#include <vector>

#include "src/util/check.h"
#if MOE_WITH_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moe::ops {

namespace {
OpProfile* g_profile = nullptr;  // set only by the bench; one process, one compute stream
int g_depth = 0;
using Clock = std::chrono::steady_clock;
}  // namespace

const char* op_kind_name(OpKind kind) {
  static constexpr std::array<const char*, static_cast<size_t>(OpKind::count)> names = {
      "gemm", "attention_forward", "attention_backward", "norm", "activation", "elementwise", "embedding", "loss", "routing", "permute",
      "optimizer", "communication"};
  const auto i = static_cast<size_t>(kind);
  MOE_CHECK(i < names.size(), "op kind ", i, " out of range");
  return names[i];
}

struct OpProfile::Impl {
  struct Record {
    OpKind kind;
    bool on_cuda;
    const char* name;
    Clock::time_point host_start;
    double host_ms = 0;
  };
  std::vector<Record> records;
  size_t open = 0;  // index of the record being timed
#if MOE_WITH_CUDA
  std::vector<std::pair<cudaEvent_t, cudaEvent_t>> events;  // one pair per CUDA record, reused
  size_t events_used = 0;
#endif
};

OpProfile::OpProfile() : impl_(std::make_unique<Impl>()) {}

OpProfile::~OpProfile() {
#if MOE_WITH_CUDA
  for (auto& [a, b] : impl_->events) {
    cuda::event_destroy(a);
    cuda::event_destroy(b);
  }
#endif
}

void OpProfile::begin(OpKind kind, bool on_cuda, const char* name) {
  impl_->records.push_back({kind, on_cuda, name, Clock::now(), 0});
  impl_->open = impl_->records.size() - 1;
  ++num_ops_;
#if MOE_WITH_CUDA
  if (on_cuda) {
    if (impl_->events_used == impl_->events.size()) {
      impl_->events.emplace_back(cuda::event_create(), cuda::event_create());
    }
    cuda::event_record(impl_->events[impl_->events_used].first);
  }
#endif
}

void OpProfile::end() {
  Impl::Record& r = impl_->records[impl_->open];
#if MOE_WITH_CUDA
  if (r.on_cuda) {
    cuda::event_record(impl_->events[impl_->events_used].second);
    ++impl_->events_used;
  }
#endif
  r.host_ms = std::chrono::duration<double, std::milli>(Clock::now() - r.host_start).count();
}

std::vector<double> OpProfile::millis() {
  std::vector<double> out;
  out.reserve(impl_->records.size());
  [[maybe_unused]] size_t event = 0;
  for (const Impl::Record& r : impl_->records) {
    double ms = r.host_ms;
#if MOE_WITH_CUDA
    if (r.on_cuda) {
      const auto& [a, b] = impl_->events[event++];
      ms = cuda::event_elapsed_ms(a, b);
    }
#endif
    out.push_back(ms);
  }
  return out;
}

std::map<std::string, double> OpProfile::millis_by_kind() {
  std::map<std::string, double> out;
  const std::vector<double> ms = millis();
  for (size_t i = 0; i < ms.size(); ++i) out[op_kind_name(impl_->records[i].kind)] += ms[i];
  return out;
}

std::map<std::string, double> OpProfile::millis_by_op() { return sum_by_op(millis()); }

std::map<std::string, double> OpProfile::host_millis_by_op() {
  std::vector<double> host;
  host.reserve(impl_->records.size());
  for (const Impl::Record& r : impl_->records) host.push_back(r.host_ms);
  return sum_by_op(host);
}

std::map<std::string, double> OpProfile::sum_by_op(const std::vector<double>& ms) {
  std::map<std::string, double> out;
  std::map<const char*, std::string> names;  // each signature shortened once
  for (size_t i = 0; i < ms.size(); ++i) {
    const Impl::Record& r = impl_->records[i];
    if (r.name == nullptr) {
      out[op_kind_name(r.kind)] += ms[i];
      continue;
    }
    auto it = names.find(r.name);
    if (it == names.end()) it = names.emplace(r.name, op_name_from_signature(r.name)).first;
    out[it->second] += ms[i];
  }
  return out;
}

void OpProfile::reset() {
  impl_->records.clear();
  num_ops_ = 0;
#if MOE_WITH_CUDA
  impl_->events_used = 0;
#endif
}

void set_op_profile(OpProfile* profile) { g_profile = profile; }

int64_t host_waits() {
#if MOE_WITH_CUDA
  return cuda::host_wait_count();
#else
  return 0;
#endif
}

double host_wait_seconds() {
#if MOE_WITH_CUDA
  return cuda::host_wait_seconds();
#else
  return 0;
#endif
}

std::string op_name_from_signature(const std::string& signature) {
  // The qualified name ends at the parameter list's '('; the return type ends at the last space
  // before it, the namespaces at the last "::".
  const size_t paren = signature.find('(');
  std::string name = signature.substr(0, paren);
  const size_t space = name.rfind(' ');
  if (space != std::string::npos) name = name.substr(space + 1);
  const size_t scope = name.rfind("::");
  if (scope != std::string::npos) name = name.substr(scope + 2);
  return name.empty() ? signature : name;
}

OpScope::OpScope(OpKind kind, const Tensor& on, const char* name) {
  if (g_profile == nullptr) return;
  counted_ = true;
  if (g_depth++ > 0) return;
  active_ = true;
  g_profile->begin(kind, on.is_cuda(), name);
}

OpScope::~OpScope() {
  if (!counted_) return;
  --g_depth;
  if (active_ && g_profile != nullptr) g_profile->end();
}

}  // namespace moe::ops
