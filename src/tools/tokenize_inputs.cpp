// Input expansion (glob(3), sorted), a buffered line reader over read(2), the record batching of
// text and JSONL files, and the JSONL field extraction with errors naming file and line.
#include "src/tools/tokenize_inputs.h"

#include <fcntl.h>
#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "src/util/check.h"

namespace moe::data {

namespace {

namespace fs = std::filesystem;

bool has_glob_chars(const std::string& pattern) { return pattern.find_first_of("*?[") != std::string::npos; }

InputKind kind_of(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  return ext == ".jsonl" || ext == ".ndjson" || ext == ".json" ? InputKind::jsonl : InputKind::text;
}

const char* corpus_word(InputKind kind) { return kind == InputKind::jsonl ? "JSONL corpus" : "text corpus"; }

std::vector<std::string> glob_matches(const std::string& pattern) {
  glob_t found{};
  const int status = ::glob(pattern.c_str(), 0, nullptr, &found);
  std::vector<std::string> paths;
  if (status == 0) {
    for (size_t i = 0; i < found.gl_pathc; ++i) paths.emplace_back(found.gl_pathv[i]);
  }
  ::globfree(&found);
  MOE_CHECK(status == 0 || status == GLOB_NOMATCH, "--input '", pattern, "': cannot expand the pattern (",
            status == GLOB_NOSPACE ? "out of memory" : "read error", ")");
  MOE_CHECK(!paths.empty(), "--input '", pattern, "' matches no files");
  std::sort(paths.begin(), paths.end());  // byte order, whatever the locale
  return paths;
}

bool is_blank(std::string_view text) { return text.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

}  // namespace

std::vector<InputFile> expand_inputs(const std::vector<std::string>& patterns) {
  MOE_CHECK(!patterns.empty(), "tokenize: no input corpus given");
  std::vector<InputFile> files;
  std::set<std::string> seen;
  for (const std::string& pattern : patterns) {
    const std::vector<std::string> paths = has_glob_chars(pattern) ? glob_matches(pattern) : std::vector{pattern};
    for (const std::string& path : paths) {
      InputFile file{path, kind_of(path), 0};
      require_regular_file(path, std::string("cannot open ") + corpus_word(file.kind));
      std::error_code error;
      const std::string canonical = fs::canonical(path, error).string();
      MOE_CHECK(seen.insert(error ? path : canonical).second, path, ": named twice among the inputs (--input ",
                pattern, ")");
      file.bytes = fs::file_size(path, error);
      MOE_CHECK(!error, path, ": cannot stat ", corpus_word(file.kind), ": ", error.message());
      files.push_back(file);
    }
  }
  return files;
}

// Lines of one file through a growing buffer: the views returned stay valid until the next call.
class CorpusReader::LineReader {
 public:
  explicit LineReader(const InputFile& file) : path_(file.path), kind_(file.kind) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    MOE_CHECK(fd_ >= 0, path_, ": cannot open ", corpus_word(kind_), ": ", std::strerror(errno));
    buffer_.resize(k_initial_bytes);
  }
  ~LineReader() { ::close(fd_); }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  bool next(std::string_view& line) {
    while (true) {
      const char* start = buffer_.data() + begin_;
      if (const void* newline = std::memchr(start, '\n', end_ - begin_)) {
        const size_t length = static_cast<const char*>(newline) - start;
        line = std::string_view(start, length);
        begin_ += length + 1;
        consumed_ += length + 1;
        ++line_number_;
        return true;
      }
      if (eof_) {
        if (begin_ == end_) return false;
        line = std::string_view(start, end_ - begin_);  // a last line without '\n'
        consumed_ += end_ - begin_;
        begin_ = end_;
        ++line_number_;
        return true;
      }
      fill();
    }
  }
  uint64_t line_number() const { return line_number_; }
  uint64_t consumed() const { return consumed_; }

 private:
  static constexpr size_t k_initial_bytes = 1 << 20;

  // Moves the unread tail to the front (doubling the buffer when a line fills it) and reads more.
  void fill() {
    if (begin_ > 0) {
      std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (end_ == buffer_.size()) buffer_.resize(buffer_.size() * 2);
    ssize_t n;
    do {
      n = ::read(fd_, buffer_.data() + end_, buffer_.size() - end_);
    } while (n < 0 && errno == EINTR);
    MOE_CHECK(n >= 0, path_, ": read failed: ", std::strerror(errno));
    if (n == 0) eof_ = true;
    end_ += static_cast<size_t>(n);
  }

  std::string path_;
  InputKind kind_;
  int fd_ = -1;
  std::vector<char> buffer_;
  size_t begin_ = 0, end_ = 0;
  bool eof_ = false;
  uint64_t line_number_ = 0;
  uint64_t consumed_ = 0;
};

CorpusReader::CorpusReader(const std::vector<InputFile>& files, bool paragraphs)
    : files_(files), paragraphs_(paragraphs) {}

CorpusReader::~CorpusReader() = default;

bool CorpusReader::next_line(std::string_view& line) {
  while (file_ < files_.size()) {
    if (!reader_) reader_ = std::make_unique<LineReader>(files_[file_]);
    if (reader_->next(line)) return true;
    bytes_before_ += reader_->consumed();
    reader_.reset();
    ++file_;
    if (!paragraph_.empty()) return false;  // a paragraph ends with its file: the caller closes it
  }
  return false;
}

void CorpusReader::close_paragraph(RawBatch& batch) {
  if (paragraph_.empty()) return;
  // The file of a paragraph closed at a file's end is the one just finished.
  const auto file = static_cast<uint32_t>(reader_ ? file_ : file_ - 1);
  batch.records.push_back({std::move(paragraph_), file, paragraph_line_});
  paragraph_.clear();
}

bool CorpusReader::next(RawBatch& batch, uint64_t batch_bytes) {
  batch.records.clear();
  batch.index = next_index_;
  uint64_t read_bytes = 0;
  std::string_view line;
  while (read_bytes < batch_bytes) {
    if (!next_line(line)) {
      close_paragraph(batch);
      if (file_ >= files_.size()) break;
      continue;  // a paragraph was cut by the end of its file; go on with the next file
    }
    read_bytes = bytes_before_ + reader_->consumed() - reported_;
    const InputFile& input = files_[file_];
    if (input.kind == InputKind::text && !line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_blank(line)) {
      if (input.kind == InputKind::text) close_paragraph(batch);
      continue;
    }
    const auto file = static_cast<uint32_t>(file_);
    if (input.kind == InputKind::jsonl || !paragraphs_) {
      close_paragraph(batch);
      batch.records.push_back({std::string(line), file, reader_->line_number()});
    } else {
      if (paragraph_.empty()) paragraph_line_ = reader_->line_number();
      else paragraph_ += '\n';
      paragraph_.append(line);
    }
  }
  const uint64_t position = bytes_before_ + (reader_ ? reader_->consumed() : 0);
  batch.input_bytes = position - reported_;
  reported_ = position;
  if (batch.records.empty() && paragraph_.empty() && file_ >= files_.size()) return false;
  ++next_index_;
  return true;
}

bool record_document(RawRecord& record, const InputFile& file, const std::string& field, std::string& out) {
  if (file.kind == InputKind::text) {
    out = std::move(record.text);
    return true;
  }
  const std::string where = file.path + ":" + std::to_string(record.line) + ": ";
  nlohmann::json value = nlohmann::json::parse(record.text, nullptr, false);
  if (value.is_discarded()) {
    std::string shown = record.text.substr(0, 60);
    MOE_FAIL(where, "not valid JSON (", shown, record.text.size() > 60 ? "..." : "", ")");
  }
  MOE_CHECK(value.is_object(), where, "a JSONL record must be an object, not ", value.type_name());
  const auto it = value.find(field);
  MOE_CHECK(it != value.end(), where, "the record has no field \"", field, "\" (--jsonl-field)");
  MOE_CHECK(it->is_string(), where, "field \"", field, "\" is ", it->type_name(), ", not a string");
  out = it->get_ref<const std::string&>();
  return !is_blank(out);
}

}  // namespace moe::data
