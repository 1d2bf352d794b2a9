// The tokenize pipeline in two passes over the inputs: a scan (documents counted, the tokenizer's
// sample drawn), then the encoding, each document going to train or validation as it comes.
#include "src/tools/tokenize_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <ostream>
#include <thread>

#include "src/data/tokenizer.h"
#include "src/io/atomic_dir.h"
#include "src/tools/tokenize_inputs.h"
#include "src/tools/tokenize_output.h"
#include "src/tools/tokenize_pipeline.h"
#include "src/util/check.h"

namespace moe::data {

namespace {

namespace fs = std::filesystem;

void check_options(const TokenizeOptions& o) {
  MOE_CHECK(!o.out_dir.empty(), "tokenize: no output directory given");
  MOE_CHECK(o.documents == "paragraphs" || o.documents == "lines", "tokenize: unknown document mode '", o.documents,
            "' (expected paragraphs or lines)");
  MOE_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "tokenize: val_fraction must be in [0, 1), got ",
            o.val_fraction);
  MOE_CHECK(!o.jsonl_field.empty(), "tokenize: the JSONL field name is empty");
  MOE_CHECK(o.num_threads >= 0, "tokenize: threads must be >= 0 (0 = every core), got ", o.num_threads);
  MOE_CHECK(o.train_threads > 0, "tokenize: tokenizer training threads must be positive, got ", o.train_threads);
  MOE_CHECK(o.sample_bytes >= 0, "tokenize: the tokenizer sample must be >= 0 bytes (0 = every line), got ",
            o.sample_bytes);
  MOE_CHECK(o.batch_bytes > 0, "tokenize: batch_bytes must be positive, got ", o.batch_bytes);
  MOE_CHECK(o.num_sentinels >= 0, "tokenize: the number of sentinels must be >= 0, got ", o.num_sentinels);
  MOE_CHECK(o.progress_seconds >= 0, "tokenize: progress_seconds must be >= 0, got ", o.progress_seconds);
  parse_output_format(o.format);
}

std::string describe_inputs(const std::vector<InputFile>& files) {
  return files.size() == 1 ? files[0].path : std::to_string(files.size()) + " inputs";
}

// "paragraphs", "JSONL field 'text'", or both for mixed inputs.
std::string describe_documents(const std::vector<InputFile>& files, const TokenizeOptions& o) {
  const bool text = std::any_of(files.begin(), files.end(), [](auto& f) { return f.kind == InputKind::text; });
  const bool jsonl = std::any_of(files.begin(), files.end(), [](auto& f) { return f.kind == InputKind::jsonl; });
  std::string out = text ? o.documents : "";
  if (jsonl) out += std::string(text ? "; " : "") + "JSONL field '" + o.jsonl_field + "'";
  return out;
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  std::error_code ec;
  if (fs::exists(to, ec) && fs::equivalent(from, to, ec)) return;
  const std::string tmp = to + ".tmp";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  MOE_CHECK(!ec, from, ": cannot copy to ", tmp, ": ", ec.message());
  fs::rename(tmp, to, ec);
  MOE_CHECK(!ec, to, ": cannot rename ", tmp, " into place: ", ec.message());
}

struct Scan {
  int64_t num_documents = 0;
  uint64_t candidate_lines = 0;
  uint64_t candidate_bytes = 0;
  std::vector<std::string> training_lines;  // the sample, training documents only
};

// Pass 1: counts the documents (the split needs N) and, when a tokenizer is to be trained,
// draws its sample. Every JSONL record is parsed here, so a bad line fails before any output.
Scan scan_corpus(const std::vector<InputFile>& files, const TokenizeOptions& o, int64_t threads, bool sample,
                 std::ostream* progress, uint64_t total_bytes) {
  const int64_t max_line = TokenizerTrainOptions{}.max_sentence_bytes;  // longer lines SentencePiece skips
  SentenceSample kept(static_cast<uint64_t>(o.sample_bytes));
  auto work = [&](RawBatch& batch, WorkResult& r) {
    std::string doc;
    for (RawRecord& record : batch.records) {
      if (!record_document(record, files[record.file], o.jsonl_field, doc)) continue;
      for (size_t pos = 0, line = 0; sample && pos <= doc.size(); ++line) {
        const size_t end = std::min(doc.find('\n', pos), doc.size());
        const std::string_view text(doc.data() + pos, end - pos);
        pos = end + 1;
        if (text.empty() || static_cast<int64_t>(text.size()) > max_line) continue;
        r.num_lines += 1;
        r.line_bytes += text.size();
        const uint64_t key = sample_key(o.seed, record.file, record.line, static_cast<uint32_t>(line));
        if (key < kept.threshold()) {
          r.lines.push_back({key, r.num_documents, static_cast<uint32_t>(line), std::string(text)});
        }
      }
      r.num_documents += 1;
    }
  };
  Scan scan;
  uint64_t bytes = 0;
  ProgressLine meter(progress, o.progress_seconds, total_bytes, "scan");
  auto consume = [&](WorkResult& r) {
    for (SampleLine& line : r.lines) {
      line.document += scan.num_documents;
      kept.offer(std::move(line));
    }
    scan.num_documents += r.num_documents;
    scan.candidate_lines += r.num_lines;
    scan.candidate_bytes += r.line_bytes;
    bytes += r.input_bytes;
    meter.update(bytes, scan.num_documents);
  };
  CorpusReader reader(files, o.documents == "paragraphs");
  run_ordered(reader, static_cast<uint64_t>(o.batch_bytes), threads, work, consume);
  meter.finish(bytes, scan.num_documents);
  MOE_CHECK(scan.num_documents > 0, describe_inputs(files), ": no documents (the inputs are empty or blank)");
  if (sample) {
    ValidationPicker replay(scan.num_documents, o.val_fraction, o.seed, describe_inputs(files));
    scan.training_lines = kept.take_training_lines(replay, scan.num_documents);
  }
  return scan;
}

// Pass 2: encodes every document (EOS after each) on the workers; the caller's thread sends each
// to its split in corpus order.
void encode_corpus(const std::vector<InputFile>& files, const TokenizeOptions& o, int64_t threads,
                   const Tokenizer& tokenizer, int64_t num_documents, SplitWriter& train, SplitWriter& val,
                   std::ostream* progress, uint64_t total_bytes) {
  const auto eos = static_cast<uint32_t>(tokenizer.eos_id());
  auto work = [&](RawBatch& batch, WorkResult& r) {
    std::string doc;
    for (RawRecord& record : batch.records) {
      if (!record_document(record, files[record.file], o.jsonl_field, doc)) continue;
      for (int32_t id : tokenizer.encode(doc)) r.tokens.push_back(static_cast<uint32_t>(id));
      r.tokens.push_back(eos);
      r.document_ends.push_back(r.tokens.size());
      r.num_documents += 1;
    }
  };
  ValidationPicker picker(num_documents, o.val_fraction, o.seed, describe_inputs(files));
  int64_t seen = 0, num_tokens = 0;
  uint64_t bytes = 0;
  ProgressLine meter(progress, o.progress_seconds, total_bytes, "encode");
  auto consume = [&](WorkResult& r) {
    uint64_t begin = 0;
    for (uint64_t end : r.document_ends) {
      const std::span<const uint32_t> doc(r.tokens.data() + begin, end - begin);
      (picker.next() ? val : train).add_document(doc);
      begin = end;
    }
    seen += r.num_documents;
    num_tokens += static_cast<int64_t>(r.tokens.size());
    bytes += r.input_bytes;
    meter.update(bytes, seen, num_tokens);
  };
  CorpusReader reader(files, o.documents == "paragraphs");
  run_ordered(reader, static_cast<uint64_t>(o.batch_bytes), threads, work, consume);
  meter.finish(bytes, seen, num_tokens);
  MOE_CHECK(seen == num_documents, describe_inputs(files), ": ", seen, " documents on the second pass, ",
            num_documents, " on the first: did an input change while it was being read?");
  train.finish();
  val.finish();
}

nlohmann::ordered_json split_json(const SplitWriter& split) {
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (const ShardRecord& s : split.shards()) {
    shards.push_back({{"name", s.name}, {"files", s.files}, {"documents", s.documents}, {"tokens", s.tokens},
                      {"bytes", s.bytes}});
  }
  return {{"documents", split.num_documents()}, {"tokens", split.num_tokens()}, {"shards", shards}};
}

// manifest.json: what was read and how, and every shard written. The same inputs and options give
// the same bytes (no times, no thread counts).
std::string manifest_text(const TokenizeOptions& o, const std::vector<InputFile>& files, const Tokenizer& tokenizer,
                          const Scan& scan, bool trained, const SplitWriter& train, const SplitWriter& val) {
  nlohmann::ordered_json inputs = nlohmann::ordered_json::array();
  for (const InputFile& f : files) {
    inputs.push_back({{"path", f.path}, {"kind", f.kind == InputKind::jsonl ? "jsonl" : "text"}, {"bytes", f.bytes}});
  }
  nlohmann::ordered_json sample = nullptr;
  if (trained) {
    uint64_t bytes = 0;
    for (const auto& line : scan.training_lines) bytes += line.size();
    sample = {{"lines", scan.training_lines.size()}, {"bytes", bytes}, {"of_lines", scan.candidate_lines},
              {"of_bytes", scan.candidate_bytes}};
  }
  nlohmann::ordered_json m = {
      {"format", o.format}, {"dtype", train.dtype_name()}, {"vocab_size", tokenizer.vocab_size()},
      {"eos_id", tokenizer.eos_id()}, {"tokenizer", "tokenizer.model"}, {"tokenizer_trained", trained},
      {"tokenizer_sample", sample}, {"seed", o.seed}, {"val_fraction", o.val_fraction},
      {"documents", o.documents}, {"jsonl_field", o.jsonl_field}, {"shard_tokens", o.shard_tokens},
      {"inputs", inputs}, {"num_documents", scan.num_documents},
      {"splits", {{"train", split_json(train)}, {"val", split_json(val)}}}};
  return m.dump(2) + "\n";
}

std::vector<std::string> shard_paths(const std::string& out_dir, const SplitWriter& split) {
  std::vector<std::string> paths;
  for (const ShardRecord& s : split.shards()) paths.push_back((fs::path(out_dir) / s.name).string());
  return paths;
}

// Trains on the scan's sample (kept in `scan` for the manifest's counts); returns the model path.
std::string train_tokenizer(const TokenizeOptions& o, Scan& scan, const std::string& out_model,
                            TokenizeSummary& summary) {
  TokenizerTrainOptions train;
  train.model_path = o.model_out.empty() ? out_model : o.model_out;
  train.vocab_size = o.vocab_size;
  train.seed = o.seed;
  train.num_threads = o.train_threads;
  if (o.special_tokens) train.control_symbols = special_token_names(o.num_sentinels);
  train.sentences = std::move(scan.training_lines);
  Tokenizer::train(train);
  scan.training_lines = std::move(train.sentences);
  summary.sample_lines = static_cast<int64_t>(scan.training_lines.size());
  for (const auto& line : scan.training_lines) summary.sample_bytes += static_cast<int64_t>(line.size());
  return train.model_path;
}

void print_summary(std::ostream& log, const TokenizeOptions& o, const std::vector<InputFile>& files,
                   const TokenizeSummary& s, const Scan& scan, bool trained, const SplitWriter& train,
                   const SplitWriter& val, int64_t threads) {
  const double mb = static_cast<double>(s.input_bytes) / 1e6;
  char rate[160];
  std::snprintf(rate, sizeof(rate), "%.2f MB in %.1f s (%.2f MB/s; encoding %.2f MB/s) on %lld threads", mb,
                s.seconds, mb / std::max(s.seconds, 1e-9), mb / std::max(s.encode_seconds, 1e-9),
                static_cast<long long>(threads));
  log << "tokenize: " << describe_inputs(files) << ": " << s.num_documents << " documents ("
      << describe_documents(files, o) << ") -> train " << s.train_documents << " docs / " << s.train_tokens
      << " tokens, val " << s.val_documents << " docs / " << s.val_tokens << " tokens; vocab " << s.vocab_size
      << " (" << (trained ? "trained" : "loaded") << ", " << train.dtype_name() << ") -> " << o.out_dir << " ("
      << o.format << ", " << train.shards().size() << " + " << val.shards().size() << " shards)";
  if (trained) {
    log << "; tokenizer sample " << s.sample_lines << " of " << scan.candidate_lines << " lines (" << s.sample_bytes
        << " of " << scan.candidate_bytes << " bytes)";
  }
  log << "; " << rate << "\n";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

TokenizeSummary run_tokenize(const TokenizeOptions& options, std::ostream& log, std::ostream* progress) {
  const TokenizeOptions& o = options;
  const auto start = std::chrono::steady_clock::now();
  check_options(o);
  const std::vector<InputFile> files = expand_inputs(o.inputs);
  const int64_t threads = o.num_threads > 0 ? o.num_threads : std::max(1u, std::thread::hardware_concurrency());
  TokenizeSummary summary;
  summary.num_inputs = static_cast<int64_t>(files.size());
  for (const InputFile& f : files) summary.input_bytes += f.bytes;
  const bool trained = o.tokenizer.empty();
  if (!trained) {
    const Tokenizer given = Tokenizer::load(o.tokenizer);  // a bad model fails before the corpus is read
    const auto reserved = o.special_tokens ? special_token_names(o.num_sentinels) : std::vector<std::string>{};
    for (const std::string& name : reserved) {
      MOE_CHECK(given.piece_id(name) >= 0, o.tokenizer, ": --special-tokens needs the piece ", name,
                ", which the given tokenizer does not have (train a new one: leave out --tokenizer)");
    }
  }

  Scan scan = scan_corpus(files, o, threads, trained, progress, summary.input_bytes);
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  MOE_CHECK(!ec, o.out_dir, ": cannot create output directory: ", ec.message());
  const std::string out_model = (fs::path(o.out_dir) / "tokenizer.model").string();
  const std::string model_path = trained ? train_tokenizer(o, scan, out_model, summary) : o.tokenizer;
  const Tokenizer tokenizer = Tokenizer::load(model_path);
  if (model_path != out_model) copy_file_atomic(model_path, out_model);
  MOE_CHECK(tokenizer.eos_id() >= 0, model_path, ": the tokenizer has no EOS piece (needed between documents)");

  const OutputFormat format = parse_output_format(o.format);
  SplitWriter train(o.out_dir, "train", format, tokenizer.vocab_size(), o.shard_tokens);
  SplitWriter val(o.out_dir, "val", format, tokenizer.vocab_size(), o.shard_tokens);
  const auto encode_start = std::chrono::steady_clock::now();
  encode_corpus(files, o, threads, tokenizer, scan.num_documents, train, val, progress, summary.input_bytes);
  summary.encode_seconds = seconds_since(encode_start);
  remove_stale_shards(o.out_dir, "train", train.shards());
  remove_stale_shards(o.out_dir, "val", val.shards());
  summary.manifest_path = (fs::path(o.out_dir) / "manifest.json").string();
  write_file_atomically(summary.manifest_path, manifest_text(o, files, tokenizer, scan, trained, train, val));

  summary.num_documents = scan.num_documents;
  summary.train_documents = train.num_documents();
  summary.val_documents = val.num_documents();
  summary.train_tokens = train.num_tokens();
  summary.val_tokens = val.num_tokens();
  summary.vocab_size = tokenizer.vocab_size();
  summary.train_shards = shard_paths(o.out_dir, train);
  summary.val_shards = shard_paths(o.out_dir, val);
  if (o.shard_tokens == 0) {
    summary.train_path = summary.train_shards.front();
    summary.val_path = summary.val_shards.front();
  }
  summary.model_path = out_model;
  summary.seconds = seconds_since(start);
  print_summary(log, o, files, summary, scan, trained, train, val, threads);
  return summary;
}

}  // namespace moe::data
