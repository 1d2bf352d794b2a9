// `moe tokenize`: text corpus -> (trained or given) SentencePiece model -> train.tok and
// val.tok native shards, split by document with a seeded shuffle. The CLI only fills the options.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

namespace moe::data {

struct TokenizeOptions {
  std::string input;              // UTF-8 text corpus
  std::string out_dir;            // created if missing; gets train.tok, val.tok, tokenizer.model
  std::string tokenizer;          // existing .model to use; "" = train a new one
  std::string model_out;          // where a trained model goes; "" = <out_dir>/tokenizer.model
  int64_t vocab_size = 8192;      // when training
  std::string documents = "paragraphs";  // paragraphs (blocks split by blank lines) | lines
  double val_fraction = 0.05;     // fraction of documents for val.tok; 0 = empty val.tok
  uint64_t seed = 1234;           // the train/val shuffle and the tokenizer trainer
  int64_t num_threads = 1;        // tokenizer training threads (1 = reproducible model)
};

struct TokenizeSummary {
  int64_t num_documents = 0;
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;       // EOS tokens included
  int64_t val_tokens = 0;
  int64_t vocab_size = 0;
  std::string train_path;
  std::string val_path;
  std::string model_path;         // the model copied or trained into out_dir
};

// Runs the whole pipeline and prints one summary line to `log`. Each document is encoded
// separately and followed by EOS. Throws moe::Error naming the file on any bad input.
TokenizeSummary run_tokenize(const TokenizeOptions& options, std::ostream& log);

}  // namespace moe::data
