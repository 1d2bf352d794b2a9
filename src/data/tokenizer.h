// The tokenizer: a thin SentencePiece wrapper (BPE training, loading, encode/decode). Trained
// models use identity normalisation and byte fallback, so any UTF-8 or binary text round-trips.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace moe::data {

struct TokenizerTrainOptions {
  // Training sentences, one per element (SentencePiece's unit: it never sees across them).
  // Sentences longer than max_sentence_bytes are skipped by SentencePiece.
  std::vector<std::string> sentences;
  std::string model_path;        // where the .model goes; a matching .vocab is written beside it
  int64_t vocab_size = 8192;
  std::string model_type = "bpe";  // bpe | unigram
  uint64_t seed = 1234;          // SentencePiece's sampling seed (fixed: training is reproducible)
  int64_t num_threads = 1;       // 1 gives bit-identical models run to run
  int64_t max_sentence_bytes = 1 << 16;
  bool verbose = false;          // SentencePiece's own progress log on stderr
  // Pieces reserved with their own ids (SentencePiece control symbols: never produced by
  // encoding text, decoded to nothing), e.g. special_token_names(): ids 3, 4, ... in order.
  std::vector<std::string> control_symbols;
};

// The special tokens `moe tokenize --special-tokens` reserves, in id order: [MASK], [CLS], [SEP]
// (masked LM, next-sentence pairs), then the T5 sentinels <extra_id_0> .. <extra_id_{n-1}>.
std::vector<std::string> special_token_names(int64_t num_sentinels);

// Special ids of trained models: <unk> = 0, <s> (BOS) = 1, </s> (EOS) = 2, then the control
// symbols (none unless reserved), then 256 byte pieces <0x00>..<0xFF>, then the learned pieces.
// vocab_size counts all of them.
class Tokenizer {
 public:
  // Trains a model and writes options.model_path (and the .vocab). Throws with SentencePiece's
  // message and the model path when it fails (e.g. a vocab larger than the text supports).
  static void train(const TokenizerTrainOptions& options);
  static Tokenizer load(const std::string& model_path);

  Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  const std::string& path() const { return path_; }
  int64_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  int32_t unk_id() const;

  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string id_to_piece(int32_t id) const;
  // The id of the piece named `piece` ("[MASK]"), -1 when the vocabulary has none.
  int32_t piece_id(const std::string& piece) const;

 private:
  std::string path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace moe::data
