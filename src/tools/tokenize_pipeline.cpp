// The ordered parallel map (one reader thread, N workers, the caller consuming in order under one
// mutex), algorithm S for the split, the key-ordered sample and the progress line.
#include "src/tools/tokenize_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <ostream>
#include <thread>

#include <fmt/format.h>

#include "src/util/check.h"

namespace moe::data {

namespace {

// Shared state of one run_ordered call; every field is guarded by `mutex`.
struct OrderedQueue {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<RawBatch> pending;
  std::map<int64_t, WorkResult> finished;
  int64_t produced = 0;
  int64_t consumed = 0;
  bool input_done = false;
  bool stop = false;
  std::exception_ptr error;

  void fail(std::exception_ptr e) {
    std::lock_guard lock(mutex);
    if (!error) error = e;
    stop = true;
    changed.notify_all();
  }
};

double now_seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// The reader thread: batches into `pending` while fewer than `max_in_flight` are unconsumed.
void produce(OrderedQueue& q, CorpusReader& reader, uint64_t batch_bytes, int64_t max_in_flight) {
  try {
    while (true) {
      {
        std::unique_lock lock(q.mutex);
        q.changed.wait(lock, [&] { return q.stop || q.produced - q.consumed < max_in_flight; });
        if (q.stop) return;
      }
      RawBatch batch;
      const bool more = reader.next(batch, batch_bytes);
      std::lock_guard lock(q.mutex);
      if (more) {
        q.pending.push_back(std::move(batch));
        ++q.produced;
      } else {
        q.input_done = true;
      }
      q.changed.notify_all();
      if (!more) return;
    }
  } catch (...) {
    q.fail(std::current_exception());
  }
}

// A worker: takes any pending batch, files its result under the batch's index.
void work_on(OrderedQueue& q, const std::function<void(RawBatch&, WorkResult&)>& work) {
  while (true) {
    RawBatch batch;
    {
      std::unique_lock lock(q.mutex);
      q.changed.wait(lock, [&] { return q.stop || !q.pending.empty() || q.input_done; });
      if (q.stop || q.pending.empty()) return;
      batch = std::move(q.pending.front());
      q.pending.pop_front();
    }
    WorkResult result;
    result.input_bytes = batch.input_bytes;
    try {
      work(batch, result);
    } catch (...) {
      q.fail(std::current_exception());
      return;
    }
    std::lock_guard lock(q.mutex);
    q.finished.emplace(batch.index, std::move(result));
    q.changed.notify_all();
  }
}

}  // namespace

void run_ordered(CorpusReader& reader, uint64_t batch_bytes, int64_t num_threads,
                 const std::function<void(RawBatch&, WorkResult&)>& work,
                 const std::function<void(WorkResult&)>& consume) {
  MOE_CHECK(num_threads > 0, "tokenize: the number of threads must be positive, got ", num_threads);
  OrderedQueue q;
  std::thread producer(produce, std::ref(q), std::ref(reader), batch_bytes, 2 * num_threads + 2);
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < num_threads; ++t) workers.emplace_back(work_on, std::ref(q), std::cref(work));
  while (true) {  // the consumer: results in batch order
    WorkResult result;
    {
      std::unique_lock lock(q.mutex);
      q.changed.wait(lock, [&] {
        return q.stop || q.finished.count(q.consumed) > 0 || (q.input_done && q.consumed == q.produced);
      });
      if (q.stop || q.finished.count(q.consumed) == 0) break;
      auto it = q.finished.find(q.consumed);
      result = std::move(it->second);
      q.finished.erase(it);
    }
    try {
      consume(result);
    } catch (...) {
      q.fail(std::current_exception());
      break;
    }
    std::lock_guard lock(q.mutex);
    ++q.consumed;
    q.changed.notify_all();
  }
  producer.join();
  for (auto& w : workers) w.join();
  if (q.error) std::rethrow_exception(q.error);
}

ValidationPicker::ValidationPicker(int64_t num_documents, double fraction, uint64_t seed, const std::string& what)
    : num_documents_(num_documents), rng_(seed ^ 0x5EEDDA7A5EEDDA7Aull) {
  if (fraction <= 0) return;
  MOE_CHECK(num_documents >= 2, what, ": ", num_documents, " document(s) cannot be split into train and validation");
  num_val_ = static_cast<int64_t>(std::llround(fraction * static_cast<double>(num_documents)));
  num_val_ = std::clamp<int64_t>(num_val_, 1, num_documents - 1);
}

bool ValidationPicker::next() {
  MOE_CHECK(seen_ < num_documents_, "tokenize: more documents than counted (", num_documents_,
            "): did an input change while it was being read?");
  const int64_t remaining = num_documents_ - seen_;
  ++seen_;
  if (chosen_ == num_val_) return false;
  // Algorithm S: take this one with probability (still needed) / (still to see).
  const bool take = rng_.below(static_cast<uint64_t>(remaining)) < static_cast<uint64_t>(num_val_ - chosen_);
  chosen_ += take ? 1 : 0;
  return take;
}

uint64_t sample_key(uint64_t seed, uint32_t file, uint64_t record_line, uint32_t line) {
  SplitMix64 rng(seed ^ 0x7A3B5C1D2E4F6071ull);
  rng.state = rng.next() ^ file;
  rng.state = rng.next() ^ record_line;
  rng.state = rng.next() ^ line;
  return rng.next();
}

void SentenceSample::offer(SampleLine&& line) {
  if (line.key >= threshold()) return;
  bytes_ += line.text.size();
  auto by_key = [](const SampleLine& a, const SampleLine& b) { return a.key < b.key; };
  heap_.push_back(std::move(line));
  std::push_heap(heap_.begin(), heap_.end(), by_key);
  // Drop the largest keys until the rest fits; nothing at or above a dropped key can come back.
  while (budget_ > 0 && bytes_ > budget_) {
    std::pop_heap(heap_.begin(), heap_.end(), by_key);
    bytes_ -= heap_.back().text.size();
    threshold_.store(heap_.back().key, std::memory_order_relaxed);
    heap_.pop_back();
  }
}

std::vector<std::string> SentenceSample::take_training_lines(ValidationPicker& picker, int64_t num_documents) {
  std::sort(heap_.begin(), heap_.end(), [](const SampleLine& a, const SampleLine& b) {
    return a.document != b.document ? a.document < b.document : a.line < b.line;
  });
  std::vector<std::string> lines;
  int64_t document = -1;
  bool is_val = false;
  for (SampleLine& line : heap_) {
    while (document < line.document) {
      is_val = picker.next();
      ++document;
    }
    if (!is_val) lines.push_back(std::move(line.text));
  }
  while (document + 1 < num_documents) {  // replays the rest, so the counts are checked to the end
    picker.next();
    ++document;
  }
  heap_.clear();
  bytes_ = 0;
  return lines;
}

ProgressLine::ProgressLine(std::ostream* out, double interval_seconds, uint64_t total_bytes, std::string phase)
    : out_(out), interval_(interval_seconds), total_(total_bytes), phase_(std::move(phase)),
      start_(now_seconds()), last_(start_) {}

double ProgressLine::seconds() const { return now_seconds() - start_; }

void ProgressLine::update(uint64_t bytes, int64_t documents, int64_t tokens) {
  if (out_ == nullptr || now_seconds() - last_ < interval_) return;
  print(bytes, documents, tokens);
}

void ProgressLine::finish(uint64_t bytes, int64_t documents, int64_t tokens) {
  if (out_ != nullptr && (bytes != printed_bytes_ || documents != printed_documents_)) print(bytes, documents, tokens);
}

void ProgressLine::print(uint64_t bytes, int64_t documents, int64_t tokens) {
  last_ = now_seconds();
  printed_bytes_ = bytes;
  printed_documents_ = documents;
  const double mb = static_cast<double>(bytes) / 1e6;
  const double elapsed = std::max(last_ - start_, 1e-9);
  std::string text = fmt::format("tokenize: {} {:.1f}% ({:.2f} of {:.2f} MB, {:.2f} MB/s, {} documents, {:.0f} "
                                 "documents/s", phase_, total_ > 0 ? 100.0 * static_cast<double>(bytes) /
                                 static_cast<double>(total_) : 100.0, mb, static_cast<double>(total_) / 1e6,
                                 mb / elapsed, documents, static_cast<double>(documents) / elapsed);
  if (tokens >= 0) text += fmt::format(", {} tokens, {:.0f} tokens/s", tokens, static_cast<double>(tokens) / elapsed);
  *out_ << text << ")\n" << std::flush;
}

}  // namespace moe::data
