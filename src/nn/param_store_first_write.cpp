// First-write gradients of the parameter store: zero_grads leaves them as they are, the first
// writer of a step stores instead of adding, and any other access zeroes them first.
#include <algorithm>

#include "src/nn/param_store.h"

namespace moe {

void ParamStore::mark_first_write_grad(ParamId id) {
  (void)info(id);  // a valid id
  if (std::find(first_write_.begin(), first_write_.end(), id) == first_write_.end()) first_write_.push_back(id);
}

ParamStore::GradWrite ParamStore::grad_for_write(ParamId id) {
  const auto at = static_cast<size_t>(id);
  if (at >= unwritten_.size() || !unwritten_[at]) return {grad(id), true};
  unwritten_[at] = false;
  return {view(grads_, id), false};
}

void ParamStore::zero_group_grads_but_first_write(ParamGroup g) {
  const int i = static_cast<int>(g);
  std::vector<FlatRange> skipped;
  unwritten_.resize(infos_.size(), false);
  for (ParamId id : first_write_) {
    if (info(id).group != g) continue;
    skipped.push_back(range(id));
    unwritten_[static_cast<size_t>(id)] = true;
  }
  std::sort(skipped.begin(), skipped.end(), [](const FlatRange& a, const FlatRange& b) { return a.begin < b.begin; });
  int64_t from = 0;
  for (const FlatRange& r : skipped) {  // parameters never overlap, so the gaps are in order
    if (r.begin > from) grads_[i].rows(from, r.begin).zero_();
    from = std::max(from, r.end);
  }
  if (group_numel_[i] > from) grads_[i].rows(from, group_numel_[i]).zero_();
}

void ParamStore::zero_unwritten(ParamId id) const {
  const auto at = static_cast<size_t>(id);
  if (at >= unwritten_.size() || !unwritten_[at]) return;
  unwritten_[at] = false;
  view(grads_, id).zero_();
}

void ParamStore::zero_unwritten(ParamGroup g) const {
  for (ParamId id : first_write_) {
    if (info(id).group == g) zero_unwritten(id);
  }
}

}  // namespace moe
