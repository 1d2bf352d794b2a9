// Trainer checkpoints in any layout: each parameter's canonical tensor is gathered from its
// EP or TP shards, each pipeline stage's root sends its stage's tensors to rank 0, which writes
// the one checkpoint; loading takes each rank's part of the canonical tensors.
#include <filesystem>
#include <set>
#include <sstream>

#include "src/train/checkpoint.h"
#include "src/train/data_state.h"
#include "src/train/metrics.h"
#include "src/train/run_dir.h"
#include "src/train/trainer.h"
#include "src/util/log.h"
#include "src/util/progress.h"

namespace moe {

namespace {

// Host tensors through a communicator that may move device tensors only (NCCL).
void send_host(Communicator& comm, const Tensor& host, int peer) {
  comm.send(host.to(comm.device()), peer);
}

Tensor recv_host(Communicator& comm, const Shape& shape, DType dtype, int peer) {
  Tensor t = Tensor::empty(shape, dtype, comm.device());
  comm.recv(t, peer);
  return t.to(Device::cpu());
}

// Text as a length (i64) then its characters (i32), for the same reason.
Tensor length_of(const std::string& text) {
  return Tensor::from_vector(std::vector<int64_t>{static_cast<int64_t>(text.size())}, {1}, DType::i64);
}

Tensor chars_of(const std::string& text, int64_t length) {
  std::vector<int32_t> chars(text.begin(), text.end());
  chars.resize(static_cast<size_t>(length));
  return Tensor::from_vector(chars, {length}, DType::i32);
}

std::string text_of(const Tensor& chars) {
  const std::vector<int32_t> values = chars.to(Device::cpu()).to_vector<int32_t>();
  return std::string(values.begin(), values.end());
}

void send_text(Communicator& comm, const std::string& text, int peer) {
  send_host(comm, length_of(text), peer);
  send_host(comm, chars_of(text, static_cast<int64_t>(text.size())), peer);
}

std::string recv_text(Communicator& comm, int peer) {
  const int64_t length = recv_host(comm, {1}, DType::i64, peer).to_vector<int64_t>()[0];
  return text_of(recv_host(comm, {length}, DType::i32, peer));
}

// Rank `root`'s text on every rank of comm.
std::string broadcast_text(Communicator& comm, const std::string& text, int root) {
  Tensor length = length_of(text).to(comm.device());
  comm.broadcast(length, root);
  const int64_t size = length.to(Device::cpu()).to_vector<int64_t>()[0];
  Tensor chars = chars_of(text, size).to(comm.device());
  if (size > 0) comm.broadcast(chars, root);
  return text_of(chars);
}

// One line per tensor: "w|m <name> <dtype> <dim> <dim> ...". Names hold no spaces. The dtype
// travels too: the moments are in the master dtype (f64 in an f64 run), the weights in f32.
std::string describe(const CheckpointTensors& tensors) {
  std::ostringstream out;
  for (int list = 0; list < 2; ++list) {
    for (const auto& [name, t] : list == 0 ? tensors.weights : tensors.moments) {
      out << (list == 0 ? "w " : "m ") << name << " " << dtype_name(t.dtype());
      for (int64_t d : t.shape()) out << " " << d;
      out << "\n";
    }
  }
  return out.str();
}

// Pipeline stages: the root of stage s (> 0) sends its tensors to rank 0 of the pipeline group
// (the world's rank 0), which appends them to its own.
void gather_stage_tensors(Communicator& pp, CheckpointTensors& tensors) {
  for (int stage = 1; stage < pp.size(); ++stage) {
    if (pp.rank() == stage) {
      send_text(pp, describe(tensors), 0);
      for (const auto* list : {&tensors.weights, &tensors.moments}) {
        for (const auto& entry : *list) send_host(pp, entry.second, 0);
      }
    } else if (pp.rank() == 0) {
      std::istringstream lines(recv_text(pp, stage));
      std::string line;
      while (std::getline(lines, line)) {
        std::istringstream fields(line);
        std::string kind, name, dtype;
        fields >> kind >> name >> dtype;
        Shape shape;
        for (int64_t d; fields >> d;) shape.push_back(d);
        Tensor t = recv_host(pp, shape, dtype_from_name(dtype), stage);
        (kind == "w" ? tensors.weights : tensors.moments).emplace_back(name, t);
      }
    }
  }
}

// The size of a checkpoint's tensor files, for the save/load lines (bytes and seconds).
double checkpoint_bytes(const std::string& dir, bool with_optimizer) {
  std::error_code error;
  double bytes = static_cast<double>(std::filesystem::file_size(dir + "/model.safetensors", error));
  if (with_optimizer) bytes += static_cast<double>(std::filesystem::file_size(dir + "/optimizer.safetensors", error));
  return error ? 0.0 : bytes;
}

}  // namespace

// A split parameter's canonical tensor: the all-gather of its shards over the group it is split
// over, each placed where it belongs (rows for EP and row-parallel TP, column blocks for
// column-parallel TP). Collective over that group.
Tensor Trainer::full_tensor(const ParamInfo& info, const Tensor& host_local) {
  if (info.split_over == SplitOver::none) return host_local;
  Communicator& group = info.split_over == SplitOver::ep ? *groups_.ep : *groups_.tp;
  if (group.size() == 1) return host_local;
  Tensor local = host_local.to(group.device()).view({host_local.numel()});
  Tensor all = Tensor::empty({local.numel() * group.size()}, local.dtype(), group.device());
  group.all_gather(local, all);
  Tensor host_all = all.to(Device::cpu());
  Tensor full = Tensor::zeros(info.full_shape, host_local.dtype());
  for (int r = 0; r < group.size(); ++r) {
    ParamInfo part = info;  // rank r's shard: the same size at its own offset
    if (info.is_col_shard()) {
      part.col_offset = r * (info.shape.back() / info.col_blocks);
    } else {
      part.row_offset = r * info.shape[0];
    }
    place_local_part(part, host_all.rows(r * local.numel(), (r + 1) * local.numel()).view(info.shape), full);
  }
  return full;
}

void Trainer::save_checkpoint() {
  finish_update();  // the weights and moments it writes are the updated ones
  guard_->check(step_, world_->rank());  // the GPU may have skipped a non-finite step no one read
  std::string dir = config_.train.run_dir + "/checkpoints/step_" + std::to_string(step_);
  ProgressDisplay progress;
  ParamStore& store = model_->params();
  // Each stage's first rank (tp 0, dp 0) keeps its stage's canonical tensors.
  const bool stage_root = topology_.coords.tp == 0 && topology_.coords.dp == 0;
  CheckpointTensors tensors;
  for (size_t i = 0; i < store.infos().size(); ++i) {  // collective: every rank, every parameter, in order
    auto id = static_cast<ParamId>(i);
    const ParamInfo& info = store.info(id);
    if (progress.due()) progress.show(fmt::format("checkpoint: gathering tensor {} of {}", i + 1, store.infos().size()));
    Tensor weight = full_tensor(info, optimizer_->full_master(id));
    Tensor m1 = full_tensor(info, optimizer_->full_moment1(id));
    Tensor m2 = full_tensor(info, optimizer_->full_moment2(id));
    if (!stage_root || info.pipeline_copy) continue;  // the first stage saves a tied table
    tensors.weights.emplace_back(info.name, weight);
    tensors.moments.emplace_back(info.name + ".exp_avg", m1);
    tensors.moments.emplace_back(info.name + ".exp_avg_sq", m2);
  }
  if (topology_.pp > 1 && stage_root) gather_stage_tensors(*groups_.pp, tensors);
  if (is_root()) {
    if (progress.mode() == ProgressDisplay::Mode::terminal) progress.show("checkpoint: writing " + dir);
    write_checkpoint_tensors(dir, tensors, {step_, config_.train.seed, world_->size(), data_state(step_)}, config_);
    progress.finish(fmt::format("saved checkpoint {} ({} in {:.1f} s)", dir, format_bytes(checkpoint_bytes(dir, true)),
                                progress.seconds()));
    for (const std::string& old : prune_checkpoints(config_.train.run_dir, config_.train.keep_last, dir)) {
      log::info("removed checkpoint {} (train.keep_last = {})", old, config_.train.keep_last);
    }
  }
  world_->barrier();
}

nlohmann::json Trainer::data_state(int64_t step) const {
  if (!train_split_ || !sampler_) return nullptr;
  return trainer_data_state(*train_split_, *sampler_, config_.data.sampling, data_batch(step) * sampler_->global_batch());
}

std::set<std::string> Trainer::model_param_names() {
  std::set<std::string> names;
  for (const ParamInfo& info : model_->params().infos()) names.insert(info.name);
  if (topology_.pp == 1) return names;
  Communicator& pp = *groups_.pp;
  if (pp.rank() != 0) {
    std::string text;
    for (const std::string& name : names) text += name + "\n";
    send_text(pp, text, 0);
    return names;
  }
  for (int stage = 1; stage < pp.size(); ++stage) {
    std::istringstream lines(recv_text(pp, stage));
    for (std::string name; std::getline(lines, name);) names.insert(name);
  }
  return names;
}

std::string Trainer::root_text(const std::string& text) const {
  return world_->size() == 1 ? text : broadcast_text(*world_, text, 0);
}

TrainerState Trainer::load_checkpoint(const std::string& dir, bool with_optimizer) {
  finish_update();  // no update still writing what the load replaces
  // Any layout loads any checkpoint: each rank takes its part of the canonical tensors.
  ProgressDisplay progress;
  log::debug("loading checkpoint {} ({})", dir, with_optimizer ? "weights and optimizer state" : "weights");
  CheckpointFiles files = read_checkpoint_files(dir, with_optimizer, config_.train.verify_checkpoints);
  std::set<std::string> names = model_param_names();  // collective over the pipeline group
  // The first stage knows every stage's names; the others miss only what take() names.
  if (topology_.coords.pp == 0) files.check_names(names);
  ParamStore& store = model_->params();
  for (size_t i = 0; i < store.infos().size(); ++i) {
    auto id = static_cast<ParamId>(i);
    const ParamInfo& info = store.info(id);
    if (progress.due()) progress.show(fmt::format("checkpoint: loading tensor {} of {}", i + 1, store.infos().size()));
    store.load_master_from_host(id, files.take(info, info.name, false));
    if (with_optimizer) {
      optimizer_->load_full_moments(id, files.take(info, info.name + ".exp_avg", true),
                                    files.take(info, info.name + ".exp_avg_sq", true));
    }
  }
  if (with_optimizer) {
    // A resumed run must read the same data, or its sample order silently changes.
    if (sampler_) check_resume_data(files.state.data, data_state(files.state.step), dir, files.state.step);
    step_ = files.state.step;
  }
  if (is_root()) {
    progress.finish(fmt::format("loaded checkpoint {} (step {}): {} in {:.1f} s", dir, files.state.step,
                                format_bytes(checkpoint_bytes(dir, with_optimizer)), progress.seconds()));
  }
  return files.state;
}

}  // namespace moe
