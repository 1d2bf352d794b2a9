// SentencePiece behind the Tokenizer class: training from in-memory sentences (model written
// atomically), loading, and encode/decode with every library status turned into a moe::Error.
#include "src/data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <unordered_map>

#include "src/util/check.h"

namespace moe::data {

namespace {

// Feeds the in-memory sentences to the trainer (no temporary corpus file).
class VectorSentenceIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorSentenceIterator(const std::vector<std::string>& sentences) : sentences_(sentences) {}
  bool done() const override { return index_ >= sentences_.size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return sentences_[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t index_ = 0;
};

std::string vocab_path_for(const std::string& model_path) {
  const std::string ext = ".model";
  if (model_path.size() > ext.size() && model_path.compare(model_path.size() - ext.size(), ext.size(), ext) == 0) {
    return model_path.substr(0, model_path.size() - ext.size()) + ".vocab";
  }
  return model_path + ".vocab";
}

// temp file + rename, so a crash never leaves a half-written model behind.
void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(out.good(), tmp, ": cannot create file");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    MOE_CHECK(out.good(), tmp, ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    MOE_FAIL(path, ": cannot rename ", tmp, " into place");
  }
}

}  // namespace

void Tokenizer::train(const TokenizerTrainOptions& options) {
  MOE_CHECK(!options.model_path.empty(), "tokenizer training: the output model path is empty");
  MOE_CHECK(options.vocab_size > 0, options.model_path, ": vocab size must be positive, got ", options.vocab_size);
  MOE_CHECK(options.model_type == "bpe" || options.model_type == "unigram", options.model_path,
            ": unknown tokenizer model type '", options.model_type, "' (expected bpe or unigram)");
  MOE_CHECK(options.num_threads > 0, options.model_path, ": num_threads must be positive, got ",
            options.num_threads);
  MOE_CHECK(!options.sentences.empty(), options.model_path, ": no training text (0 sentences)");
  // 3 specials + 256 bytes are always present; SentencePiece needs learned pieces beyond them.
  const auto num_control = static_cast<int64_t>(options.control_symbols.size());
  MOE_CHECK(options.vocab_size > 259 + num_control, options.model_path, ": vocab size ", options.vocab_size,
            " too small: byte fallback alone takes 259 ids (<unk>, <s>, </s> and 256 bytes)",
            num_control > 0 ? " and the reserved special tokens " + std::to_string(num_control) + " more" : "");
  std::string control;
  for (const std::string& piece : options.control_symbols) {
    MOE_CHECK(!piece.empty() && piece.find(',') == std::string::npos, options.model_path,
              ": a reserved special token must be non-empty and without commas, got '", piece, "'");
    control += (control.empty() ? "" : ",") + piece;
  }

  const std::unordered_map<std::string, std::string> kwargs = {
      {"model_type", options.model_type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"byte_fallback", "true"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"character_coverage", "0.9995"},
      {"input_sentence_size", "0"},  // use every sentence: no random sampling
      {"shuffle_input_sentence", "false"},
      {"max_sentence_length", std::to_string(options.max_sentence_bytes)},
      {"num_threads", std::to_string(options.num_threads)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"control_symbols", control},
      {"minloglevel", options.verbose ? "0" : "2"},
  };
  // UINT_MAX is reserved by SentencePiece for "seed from std::random_device".
  unsigned int seed = static_cast<unsigned int>(options.seed ^ (options.seed >> 32));
  if (seed == std::numeric_limits<unsigned int>::max()) seed = 0;
  sentencepiece::SetRandomGeneratorSeed(seed);

  VectorSentenceIterator iterator(options.sentences);
  std::string serialized;
  auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &iterator, &serialized);
  MOE_CHECK(status.ok(), options.model_path, ": tokenizer training failed: ", status.ToString());
  MOE_CHECK(!serialized.empty(), options.model_path, ": tokenizer training produced an empty model");
  write_file_atomic(options.model_path, serialized);

  // The .vocab (piece TAB score) is for people reading the model, as spm_train writes it.
  Tokenizer tok = load(options.model_path);
  std::string vocab;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    vocab += tok.processor_->IdToPiece(id);
    vocab += '\t';
    vocab += std::to_string(tok.processor_->GetScore(id));
    vocab += '\n';
  }
  write_file_atomic(vocab_path_for(options.model_path), vocab);
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  Tokenizer tok;
  tok.path_ = model_path;
  tok.processor_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  require_regular_file(model_path, "cannot open tokenizer model");  // before opening: a FIFO would block
  {
    std::ifstream probe(model_path, std::ios::binary);
    MOE_CHECK(probe.good(), model_path, ": cannot open tokenizer model");
  }
  auto status = tok.processor_->Load(model_path);
  MOE_CHECK(status.ok(), model_path, ": not a SentencePiece model: ", status.ToString());
  return tok;
}

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

int64_t Tokenizer::vocab_size() const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  return processor_->GetPieceSize();
}

int32_t Tokenizer::bos_id() const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  return processor_->bos_id();
}

int32_t Tokenizer::eos_id() const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  return processor_->eos_id();
}

int32_t Tokenizer::unk_id() const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  return processor_->unk_id();
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  std::vector<int> ids;
  auto status = processor_->Encode(text, &ids);
  MOE_CHECK(status.ok(), path_, ": encode failed: ", status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  const int32_t n = processor_->GetPieceSize();
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] >= 0 && ids[i] < n, path_, ": token ", i, " = ", ids[i], " is outside the vocabulary [0, ", n,
              ")");
  }
  std::string text;
  auto status = processor_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  MOE_CHECK(status.ok(), path_, ": decode failed: ", status.ToString());
  return text;
}

std::string Tokenizer::id_to_piece(int32_t id) const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  MOE_CHECK(id >= 0 && id < processor_->GetPieceSize(), path_, ": id ", id, " is outside the vocabulary [0, ",
            processor_->GetPieceSize(), ")");
  return processor_->IdToPiece(id);
}

int32_t Tokenizer::piece_id(const std::string& piece) const {
  MOE_CHECK(processor_ != nullptr, "tokenizer: no model loaded");
  const int id = processor_->PieceToId(piece);  // <unk>'s id when there is no such piece
  return id >= 0 && processor_->IdToPiece(id) == piece ? id : -1;
}

std::vector<std::string> special_token_names(int64_t num_sentinels) {
  std::vector<std::string> names = {"[MASK]", "[CLS]", "[SEP]"};
  for (int64_t i = 0; i < num_sentinels; ++i) names.push_back("<extra_id_" + std::to_string(i) + ">");
  return names;
}

}  // namespace moe::data
