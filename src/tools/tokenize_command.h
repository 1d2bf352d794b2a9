// `moe tokenize`: text and JSONL corpora (files, globs) -> (trained or given) SentencePiece model
// -> train and validation token shards (native or Megatron), split by document, and a manifest.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace moe::data {

struct TokenizeOptions {
  std::vector<std::string> inputs;  // files or globs; .jsonl/.ndjson/.json are JSON lines, others text
  std::string jsonl_field = "text";  // the field of a JSONL record that holds its document
  std::string out_dir;              // created if missing; gets the shards, tokenizer.model, manifest.json
  std::string tokenizer;            // existing .model to use; "" = train a new one
  std::string model_out;            // where a trained model goes; "" = <out_dir>/tokenizer.model
  int64_t vocab_size = 8192;        // when training
  // Reserve special_token_names(num_sentinels) ([MASK], [CLS], [SEP], <extra_id_i>) in a trained
  // tokenizer; with a given one, require that it has them all.
  bool special_tokens = false;
  int64_t num_sentinels = 100;      // T5 sentinels reserved with special_tokens
  std::string documents = "paragraphs";  // text files: paragraphs (blocks split by blank lines) | lines
  double val_fraction = 0.05;       // fraction of documents for validation; 0 = an empty validation split
  uint64_t seed = 1234;             // the train/val choice and the tokenizer's sample and trainer
  std::string format = "native";    // native (.tok) | megatron (.bin/.idx)
  int64_t shard_tokens = 0;         // > 0: shards of whole documents of at least this many tokens
  int64_t num_threads = 0;          // encoding workers; 0 = every core. Output does not depend on it
  int64_t train_threads = 1;        // SentencePiece trainer threads (1 = byte-identical models)
  int64_t sample_bytes = 100000000;  // tokenizer training text (100 MB), sampled by line; 0 = every line
  int64_t batch_bytes = 1 << 20;    // input per batch handed to a worker
  double progress_seconds = 10;     // a progress line at most this often (0 = after every batch)
};

struct TokenizeSummary {
  int64_t num_inputs = 0;
  uint64_t input_bytes = 0;
  int64_t num_documents = 0;
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;         // EOS tokens included
  int64_t val_tokens = 0;
  int64_t vocab_size = 0;
  std::string train_path;           // the one file (or Megatron prefix) of an unsharded split
  std::string val_path;
  std::vector<std::string> train_shards;  // every shard, as data.train_path takes it
  std::vector<std::string> val_shards;
  std::string model_path;           // the model copied or trained into out_dir
  std::string manifest_path;
  int64_t sample_lines = 0;         // lines the tokenizer was trained on (0 when loaded)
  int64_t sample_bytes = 0;
  double seconds = 0;               // wall time of the whole run
  double encode_seconds = 0;        // of the encoding pass alone
};

// Runs the whole pipeline and prints one summary line to `log`; progress lines go to `progress`
// when it is not null. Each document is encoded separately and followed by EOS. Throws
// moe::Error naming the file (and line, for JSONL) on any bad input.
TokenizeSummary run_tokenize(const TokenizeOptions& options, std::ostream& log, std::ostream* progress = nullptr);

}  // namespace moe::data
