// The tokenize pipeline: read documents, split train/val by a seeded shuffle of documents,
// train (on the train split only) or load the tokenizer, encode with EOS after each document.
#include "src/tools/tokenize_command.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>

#include "src/data/batch_sampler.h"
#include "src/data/token_shard.h"
#include "src/data/tokenizer.h"
#include "src/util/check.h"

namespace moe::data {

namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), path, ": cannot open text corpus: ", std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  MOE_CHECK(!in.bad(), path, ": read failed");
  return buffer.str();
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
}

// Documents are paragraphs (runs of non-blank lines, joined by '\n') or single non-blank lines.
// A trailing '\r' (CRLF files) is dropped from every line.
std::vector<std::string> split_documents(const std::string& text, bool paragraphs) {
  std::vector<std::string> docs;
  std::string current;
  bool open = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_blank(line)) {
      if (open) docs.push_back(std::move(current));
      current.clear();
      open = false;
    } else if (!paragraphs) {
      docs.emplace_back(line);
    } else {
      if (open) current += '\n';
      current += line;
      open = true;
    }
    pos = end + 1;
  }
  if (open) docs.push_back(std::move(current));
  return docs;
}

// true for documents that go to validation: exactly round(fraction * n) of them (at least one
// when fraction > 0), chosen by a Fisher-Yates shuffle of document indices seeded by `seed`.
std::vector<bool> choose_validation(int64_t num_docs, double fraction, uint64_t seed, const std::string& input) {
  std::vector<bool> is_val(static_cast<size_t>(num_docs), false);
  if (fraction <= 0) return is_val;
  MOE_CHECK(num_docs >= 2, input, ": ", num_docs, " document(s) cannot be split into train and validation");
  int64_t num_val = static_cast<int64_t>(std::llround(fraction * static_cast<double>(num_docs)));
  num_val = std::clamp<int64_t>(num_val, 1, num_docs - 1);
  std::vector<int64_t> order(static_cast<size_t>(num_docs));
  for (int64_t i = 0; i < num_docs; ++i) order[static_cast<size_t>(i)] = i;
  SplitMix64 rng(seed ^ 0x5EEDDA7A5EEDDA7Aull);
  for (int64_t i = num_docs - 1; i > 0; --i) {
    auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  for (int64_t k = 0; k < num_val; ++k) is_val[static_cast<size_t>(order[static_cast<size_t>(k)])] = true;
  return is_val;
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

}  // namespace

TokenizeSummary run_tokenize(const TokenizeOptions& options, std::ostream& log) {
  MOE_CHECK(!options.input.empty(), "tokenize: no input corpus given");
  MOE_CHECK(!options.out_dir.empty(), "tokenize: no output directory given");
  MOE_CHECK(options.documents == "paragraphs" || options.documents == "lines", "tokenize: unknown document mode '",
            options.documents, "' (expected paragraphs or lines)");
  MOE_CHECK(options.val_fraction >= 0 && options.val_fraction < 1, "tokenize: val_fraction must be in [0, 1), got ",
            options.val_fraction);

  const std::string text = read_text(options.input);
  const auto docs = split_documents(text, options.documents == "paragraphs");
  MOE_CHECK(!docs.empty(), options.input, ": no documents (the file is empty or blank)");
  const auto num_docs = static_cast<int64_t>(docs.size());
  const auto is_val = choose_validation(num_docs, options.val_fraction, options.seed, options.input);

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  MOE_CHECK(!ec, options.out_dir, ": cannot create output directory: ", ec.message());
  const std::string out_model = (fs::path(options.out_dir) / "tokenizer.model").string();

  std::string model_path;
  bool trained = false;
  if (options.tokenizer.empty()) {
    TokenizerTrainOptions train;
    train.model_path = options.model_out.empty() ? out_model : options.model_out;
    train.vocab_size = options.vocab_size;
    train.seed = options.seed;
    train.num_threads = options.num_threads;
    // Train on the train split only, one sentence per line, so validation text stays unseen.
    for (size_t d = 0; d < docs.size(); ++d) {
      if (is_val[d]) continue;
      std::string_view doc = docs[d];
      size_t pos = 0;
      while (pos <= doc.size()) {
        size_t end = std::min(doc.find('\n', pos), doc.size());
        train.sentences.emplace_back(doc.substr(pos, end - pos));
        pos = end + 1;
      }
    }
    Tokenizer::train(train);
    model_path = train.model_path;
    trained = true;
  } else {
    model_path = options.tokenizer;
  }
  const Tokenizer tokenizer = Tokenizer::load(model_path);
  if (model_path != out_model) copy_file_atomic(model_path, out_model);
  const int32_t eos = tokenizer.eos_id();
  MOE_CHECK(eos >= 0, model_path, ": the tokenizer has no EOS piece (needed between documents)");

  std::vector<uint32_t> train_tokens, val_tokens;
  TokenizeSummary summary;
  for (size_t d = 0; d < docs.size(); ++d) {
    auto& out = is_val[d] ? val_tokens : train_tokens;
    for (int32_t id : tokenizer.encode(docs[d])) out.push_back(static_cast<uint32_t>(id));
    out.push_back(static_cast<uint32_t>(eos));
    (is_val[d] ? summary.val_documents : summary.train_documents) += 1;
  }

  const TokenDType dtype = token_dtype_for_vocab(tokenizer.vocab_size());
  summary.num_documents = num_docs;
  summary.train_tokens = static_cast<int64_t>(train_tokens.size());
  summary.val_tokens = static_cast<int64_t>(val_tokens.size());
  summary.vocab_size = tokenizer.vocab_size();
  summary.train_path = (fs::path(options.out_dir) / "train.tok").string();
  summary.val_path = (fs::path(options.out_dir) / "val.tok").string();
  summary.model_path = out_model;
  write_token_shard(summary.train_path, train_tokens, dtype);
  write_token_shard(summary.val_path, val_tokens, dtype);

  log << "tokenize: " << options.input << ": " << num_docs << " documents (" << options.documents << ") -> train "
      << summary.train_documents << " docs / " << summary.train_tokens << " tokens, val " << summary.val_documents
      << " docs / " << summary.val_tokens << " tokens; vocab " << summary.vocab_size << " ("
      << (trained ? "trained" : "loaded") << ", " << token_dtype_name(dtype) << ") -> " << options.out_dir << "\n";
  return summary;
}

}  // namespace moe::data
