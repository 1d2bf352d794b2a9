// The machinery of `moe tokenize` that does not depend on the output: the ordered parallel map
// over record batches, the streaming train/validation choice, the tokenizer's sentence sample
// and the progress line. Output does not depend on the number of threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include "src/data/batch_sampler.h"
#include "src/tools/tokenize_inputs.h"

namespace moe::data {

// A candidate sentence for the tokenizer: one line of a document, with a key that depends only on
// (seed, file, record line, line within the record), never on batching or threads.
struct SampleLine {
  uint64_t key = 0;
  int64_t document = 0;  // batch-local from a worker; made global by the consumer
  uint32_t line = 0;     // within the document
  std::string text;
};

// What a worker makes of one batch, for the scan pass (documents counted, sample lines) or the
// encode pass (each document's tokens and EOS, back to back).
struct WorkResult {
  uint64_t input_bytes = 0;
  int64_t num_documents = 0;
  std::vector<SampleLine> lines;  // those under the sample's threshold when the worker looked
  uint64_t num_lines = 0;         // every candidate line (and its bytes), kept or not
  uint64_t line_bytes = 0;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> document_ends;  // end of each document in `tokens`
};

// Reads batches of about `batch_bytes` on this thread's helper, runs `work` on `num_threads`
// workers and calls `consume` on the calling thread in batch order. At most 2 * threads + 2
// batches exist at once, so memory does not grow with the corpus. The first exception of any
// thread stops the others and is rethrown here.
void run_ordered(CorpusReader& reader, uint64_t batch_bytes, int64_t num_threads,
                 const std::function<void(RawBatch&, WorkResult&)>& work,
                 const std::function<void(WorkResult&)>& consume);

// Chooses exactly round(fraction * N) of N documents for validation (at least 1 when fraction >
// 0, at most N - 1), every such subset equally likely, one decision per document in corpus order
// with O(1) memory: selection sampling (Knuth, TAOCP vol. 2, 3.4.2, algorithm S), driven by
// SplitMix64 from the seed. The same (N, fraction, seed) replays the same choices.
class ValidationPicker {
 public:
  ValidationPicker(int64_t num_documents, double fraction, uint64_t seed, const std::string& what);
  bool next();  // whether the next document goes to validation
  int64_t num_validation() const { return num_val_; }

 private:
  int64_t num_documents_;
  int64_t num_val_ = 0;
  int64_t seen_ = 0;
  int64_t chosen_ = 0;
  SplitMix64 rng_;
};

// The tokenizer's training text: of all candidate lines, those with the smallest keys whose bytes
// fit in `budget_bytes` (0 = every line), so the sample is spread over the whole corpus and is the
// same however the lines arrive. Memory stays within the budget.
class SentenceSample {
 public:
  explicit SentenceSample(uint64_t budget_bytes) : budget_(budget_bytes) {}

  // Workers may skip lines whose key is at or above this: they could not be kept.
  uint64_t threshold() const { return threshold_.load(std::memory_order_relaxed); }
  void offer(SampleLine&& line);
  // The kept lines of training documents in corpus order; `picker` replays the split over all
  // documents (consumed).
  std::vector<std::string> take_training_lines(ValidationPicker& picker, int64_t num_documents);

 private:
  uint64_t budget_;
  uint64_t bytes_ = 0;
  std::atomic<uint64_t> threshold_{~uint64_t{0}};
  std::vector<SampleLine> heap_;  // max-heap by key
};

// The key of one candidate line.
uint64_t sample_key(uint64_t seed, uint32_t file, uint64_t record_line, uint32_t line);

// "tokenize: encode 42.0% (12.30 of 29.30 MB, 5.10 MB/s, 1234 documents, 2900 documents/s, 1500000 tokens,
// 350000 tokens/s)" on `out` at most every `interval_seconds` (0: after every batch), and once at
// 100%; the token counts when known (tokens >= 0: the encode pass). `out` may be null (silent).
class ProgressLine {
 public:
  ProgressLine(std::ostream* out, double interval_seconds, uint64_t total_bytes, std::string phase);
  void update(uint64_t bytes, int64_t documents, int64_t tokens = -1);
  void finish(uint64_t bytes, int64_t documents, int64_t tokens = -1);
  double seconds() const;

 private:
  void print(uint64_t bytes, int64_t documents, int64_t tokens);

  std::ostream* out_;
  double interval_;
  uint64_t total_;
  std::string phase_;
  double start_;
  double last_;
  uint64_t printed_bytes_ = ~uint64_t{0};
  int64_t printed_documents_ = -1;
};

}  // namespace moe::data
