// All-to-all dispatcher: expert-sorted rows move to the ranks owning their experts through the
// communicator's all-to-all-v, and are regrouped there by local expert with one row gather.
#include "parallel/alltoall_dispatcher.h"

#include <limits>
#include <numeric>

#include "src/ops/ops.h"

namespace moe {

namespace {

int64_t total(const std::vector<int64_t>& counts) { return std::accumulate(counts.begin(), counts.end(), int64_t{0}); }

// Sums of consecutive blocks of `block` entries: [ep * L] -> [ep].
std::vector<int64_t> block_sums(const std::vector<int64_t>& counts, int64_t block) {
  std::vector<int64_t> sums(counts.size() / static_cast<size_t>(block), 0);
  for (size_t i = 0; i < counts.size(); ++i) sums[i / static_cast<size_t>(block)] += counts[i];
  return sums;
}

// The received rows are source-major: block (q, j) of recv_expert_counts[q*L + j] rows, q-major.
// The experts read them local-expert-major, (j, q)-ordered. Fills local_rows[i] = received row
// of local row i and received_rows[r] = local row of received row r.
void build_expert_order(const std::vector<int64_t>& recv_expert_counts, int ep, int64_t num_local,
                        std::vector<int32_t>& local_rows, std::vector<int32_t>& received_rows) {
  const int64_t rows = total(recv_expert_counts);
  MOE_CHECK(rows <= std::numeric_limits<int32_t>::max(), "AllToAllDispatcher: ", rows,
            " received rows exceed the i32 row index");
  std::vector<int64_t> recv_offset(recv_expert_counts.size(), 0);
  for (size_t b = 1; b < recv_offset.size(); ++b) recv_offset[b] = recv_offset[b - 1] + recv_expert_counts[b - 1];
  local_rows.assign(static_cast<size_t>(rows), 0);
  received_rows.assign(static_cast<size_t>(rows), 0);
  int64_t at = 0;
  for (int64_t j = 0; j < num_local; ++j) {
    for (int64_t q = 0; q < ep; ++q) {
      const size_t b = static_cast<size_t>(q * num_local + j);
      for (int64_t i = 0; i < recv_expert_counts[b]; ++i, ++at) {
        const int64_t r = recv_offset[b] + i;
        local_rows[static_cast<size_t>(at)] = static_cast<int32_t>(r);
        received_rows[static_cast<size_t>(r)] = static_cast<int32_t>(at);
      }
    }
  }
}

// Row moves that skip empty index sets: the ops' shape checks read a zero-row tensor as having
// zero columns, so an empty gather from (or scatter into) a non-empty tensor is refused.
void gather_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  if (index.numel() > 0) ops::gather_rows(src, index, dst);
}
void scatter_add_rows(const Tensor& src, const Tensor& index, Tensor& dst) {
  if (index.numel() > 0) ops::scatter_add_rows(src, index, dst);
}

void check_rows(const Tensor& t, int64_t rows, const char* call, const char* name) {
  MOE_CHECK(t.defined() && t.ndim() == 2 && t.size(0) == rows, "AllToAllDispatcher::", call, ": ", name, " must have ",
            rows, " rows [", rows, ",d], got ", t.defined() ? shape_str(t.shape()) : "undefined");
}

}  // namespace

AllToAllDispatcher::AllToAllDispatcher(int64_t num_experts, Communicator& ep_group)
    : group_(&ep_group), num_experts_(num_experts) {
  const int ep = ep_group.size();
  MOE_CHECK(num_experts >= 1, "AllToAllDispatcher: the expert count must be positive, got ", num_experts);
  MOE_CHECK(num_experts % ep == 0, "AllToAllDispatcher: ", num_experts,
            " experts cannot be split evenly over an EP group of ", ep, " ranks");
  num_local_ = num_experts / ep;
  first_expert_ = static_cast<int64_t>(ep_group.rank()) * num_local_;
}

Tensor AllToAllDispatcher::dispatch(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const {
  dispatch_start(x, ids, saved);
  return dispatch_finish(saved);
}

void AllToAllDispatcher::dispatch_start(const Tensor& x, const Tensor& ids, DispatchSaved& saved) const {
  MOE_CHECK(x.ndim() == 2, "AllToAllDispatcher::dispatch: x must be [T,d], got ", shape_str(x.shape()));
  MOE_CHECK(ids.ndim() == 2 && ids.size(0) == x.size(0), "AllToAllDispatcher::dispatch: ids ", shape_str(ids.shape()),
            " must be [T,k] for x ", shape_str(x.shape()));
  const Device device = group_->device();
  MOE_CHECK(x.device() == device && ids.device() == device, "AllToAllDispatcher::dispatch: x on ", x.device().str(),
            " and ids on ", ids.device().str(), ", but the EP group moves tensors on ", device.str());
  const int ep = group_->size();
  saved = DispatchSaved{};
  saved.num_tokens = x.size(0);
  saved.sorted_tokens = Tensor::empty({ids.numel()}, DType::i32, device);
  saved.slot_pos = Tensor::empty({ids.numel()}, DType::i32, device);
  Tensor offsets = Tensor::empty({num_experts_ + 1}, DType::i32, device);
  ops::moe_sort_by_expert(ids, num_experts_, saved.sorted_tokens, saved.slot_pos, offsets);
  // [this rank's routed slots per expert | the slots every rank routes to this rank's experts],
  // made on the device: each rank sends rank q its L counts of q's experts and receives L counts
  // from every rank. Both halves go to the host in one copy into page-locked memory, the one
  // host wait of the layer (combine and the backward reuse the counts).
  const int64_t E = num_experts_;
  Tensor counts = Tensor::zeros({2 * E}, DType::i64, device);
  Tensor counts_out = counts.rows(0, E), counts_in = counts.rows(E, 2 * E);
  ops::count_experts(ids, E, counts_out);
  const std::vector<int64_t> per_rank(static_cast<size_t>(ep), num_local_);
  group_->all_to_all_v(counts_out, per_rank, counts_in, per_rank);
  counts_host_.read_start(counts);
  // The permutation writes the send buffer directly, queued behind the read: the device permutes
  // while the host waits for the counts. Slots without an expert sort last as zero rows, which
  // are not sent.
  Tensor send = Tensor::empty({ids.numel(), x.size(1)}, x.dtype(), device);
  gather_rows(x, saved.sorted_tokens, send);
  const int64_t* host_counts = counts_host_.read_finish<int64_t>();
  saved.routed_counts.assign(host_counts, host_counts + E);
  saved.recv_expert_counts.assign(host_counts + E, host_counts + 2 * E);
  const int64_t num_sorted = total(saved.routed_counts);  // dropped slots (id -1) get no row
  saved.sorted_tokens = saved.sorted_tokens.rows(0, num_sorted);
  // Global expert order groups the rows by owner: rank q's rows are experts [q*L, (q+1)*L).
  saved.send_counts = block_sums(saved.routed_counts, num_local_);
  saved.recv_counts = block_sums(saved.recv_expert_counts, num_local_);
  saved.counts.assign(static_cast<size_t>(num_local_), 0);
  for (size_t b = 0; b < saved.recv_expert_counts.size(); ++b)
    saved.counts[b % static_cast<size_t>(num_local_)] += saved.recv_expert_counts[b];

  // With one source rank or one local expert the received order already is expert-major.
  if (ep > 1 && num_local_ > 1) {
    std::vector<int32_t> local_rows, received_rows;
    build_expert_order(saved.recv_expert_counts, ep, num_local_, local_rows, received_rows);
    const int64_t n = static_cast<int64_t>(local_rows.size());
    saved.local_rows = Tensor::from_vector(local_rows, {n}, DType::i32, device);
    saved.received_rows = Tensor::from_vector(received_rows, {n}, DType::i32, device);
  }
  Exchange exchange = to_experts_start(saved, send.rows(0, num_sorted), "dispatch");
  saved.pending = std::move(exchange.pending);
  saved.pending_rows = exchange.rows;
}

Tensor AllToAllDispatcher::dispatch_finish(DispatchSaved& saved) const {
  Exchange exchange{std::move(saved.pending), saved.pending_rows};
  saved.pending_rows = Tensor();
  return to_experts_finish(saved, exchange);
}

AllToAllDispatcher::Exchange AllToAllDispatcher::to_experts_start(const DispatchSaved& saved,
                                                                  const Tensor& sorted_rows, const char* call) const {
  MOE_CHECK(saved.send_counts.size() == static_cast<size_t>(group_->size()), "AllToAllDispatcher::", call,
            ": saved does not come from AllToAllDispatcher::dispatch over this EP group");
  check_rows(sorted_rows, total(saved.send_counts), call, "the sorted rows");
  Exchange exchange;
  exchange.rows =
      Tensor::empty({total(saved.recv_counts), sorted_rows.size(1)}, sorted_rows.dtype(), sorted_rows.device());
  exchange.pending = group_->all_to_all_v_start(sorted_rows, saved.send_counts, exchange.rows, saved.recv_counts);
  return exchange;
}

Tensor AllToAllDispatcher::to_experts_finish(const DispatchSaved& saved, Exchange& exchange) const {
  MOE_CHECK(exchange.rows.defined(), "AllToAllDispatcher: a *_finish without its *_start");
  if (exchange.pending) exchange.pending->wait();
  exchange.pending.reset();
  Tensor received = exchange.rows;
  if (!saved.local_rows.defined()) return received;
  Tensor local = Tensor::empty(received.shape(), received.dtype(), received.device());
  gather_rows(received, saved.local_rows, local);
  return local;
}

Tensor AllToAllDispatcher::to_experts(const DispatchSaved& saved, const Tensor& sorted_rows, const char* call) const {
  Exchange exchange = to_experts_start(saved, sorted_rows, call);
  return to_experts_finish(saved, exchange);
}

AllToAllDispatcher::Exchange AllToAllDispatcher::from_experts_start(const DispatchSaved& saved,
                                                                    const Tensor& local_rows, const char* call) const {
  MOE_CHECK(saved.send_counts.size() == static_cast<size_t>(group_->size()), "AllToAllDispatcher::", call,
            ": saved does not come from AllToAllDispatcher::dispatch over this EP group");
  check_rows(local_rows, total(saved.counts), call, "the local rows");
  Tensor received = local_rows;
  if (saved.received_rows.defined()) {
    received = Tensor::empty(local_rows.shape(), local_rows.dtype(), local_rows.device());
    gather_rows(local_rows, saved.received_rows, received);
  }
  Exchange exchange;
  exchange.rows =
      Tensor::empty({total(saved.send_counts), local_rows.size(1)}, local_rows.dtype(), local_rows.device());
  exchange.pending = group_->all_to_all_v_start(received, saved.recv_counts, exchange.rows, saved.send_counts);
  return exchange;
}

Tensor AllToAllDispatcher::from_experts_finish(Exchange& exchange) const {
  MOE_CHECK(exchange.rows.defined(), "AllToAllDispatcher: a *_finish without its *_start");
  if (exchange.pending) exchange.pending->wait();
  exchange.pending.reset();
  return exchange.rows;
}

Tensor AllToAllDispatcher::from_experts(const DispatchSaved& saved, const Tensor& local_rows, const char* call) const {
  Exchange exchange = from_experts_start(saved, local_rows, call);
  return from_experts_finish(exchange);
}

Tensor AllToAllDispatcher::dispatch_backward(const DispatchSaved& saved, const Tensor& dx_local,
                                             const Tensor& add) const {
  Tensor dx_sorted = from_experts(saved, dx_local, "dispatch_backward");
  Tensor dx = Tensor::zeros({saved.num_tokens, dx_sorted.size(1)}, dx_sorted.dtype(), dx_sorted.device());
  scatter_add_rows(dx_sorted, saved.sorted_tokens, dx);
  if (add.defined()) ops::accumulate(dx, add);
  return dx;
}

Tensor AllToAllDispatcher::combine(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const {
  combine_start(saved, y_local, weights);
  return combine_finish(saved, weights);
}

void AllToAllDispatcher::combine_start(DispatchSaved& saved, const Tensor& y_local, const Tensor& weights) const {
  (void)weights;
  Exchange exchange = from_experts_start(saved, y_local, "combine");
  saved.pending = std::move(exchange.pending);
  saved.pending_rows = exchange.rows;
}

Tensor AllToAllDispatcher::combine_finish(DispatchSaved& saved, const Tensor& weights) const {
  Exchange exchange{std::move(saved.pending), saved.pending_rows};
  saved.pending_rows = Tensor();
  saved.combine_rows = from_experts_finish(exchange);
  return combine_rows(saved, saved.combine_rows, weights);
}

void AllToAllDispatcher::combine_backward(const DispatchSaved& saved, const Tensor& y_local, const Tensor& weights,
                                          const Tensor& dout, Tensor& dy_local, Tensor& dweights) const {
  combine_backward_start(saved, y_local, weights, dout, dweights);
  dy_local = combine_backward_finish(saved);
}

void AllToAllDispatcher::combine_backward_start(const DispatchSaved& saved, const Tensor& y_local,
                                                const Tensor& weights, const Tensor& dout, Tensor& dweights) const {
  check_rows(y_local, total(saved.counts), "combine_backward", "y_local");
  // A caller that dropped combine_rows to save memory pays one more all-to-all instead.
  Tensor y_sorted =
      saved.combine_rows.defined() ? saved.combine_rows : from_experts(saved, y_local, "combine_backward");
  check_rows(y_sorted, total(saved.send_counts), "combine_backward", "saved.combine_rows");
  Tensor dy_sorted = Tensor::empty(y_sorted.shape(), y_sorted.dtype(), y_sorted.device());
  dweights = Tensor::empty(weights.shape(), weights.dtype(), weights.device());
  ops::moe_combine_backward(y_sorted, saved.slot_pos, weights, dout, dy_sorted, dweights);
  Exchange exchange = to_experts_start(saved, dy_sorted, "combine_backward");
  saved.pending = std::move(exchange.pending);
  saved.pending_rows = exchange.rows;
}

Tensor AllToAllDispatcher::combine_backward_finish(const DispatchSaved& saved) const {
  Exchange exchange{std::move(saved.pending), saved.pending_rows};
  saved.pending_rows = Tensor();
  return to_experts_finish(saved, exchange);
}

}  // namespace moe
