// The inputs of `moe tokenize`: files and globs expanded in a fixed order, read as a stream of raw
// records (text paragraphs or lines, JSONL lines) in batches, and a record's document text.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe::data {

// .jsonl, .ndjson and .json files hold one JSON object per line; anything else is UTF-8 text.
enum class InputKind { text, jsonl };

struct InputFile {
  std::string path;
  InputKind kind = InputKind::text;
  uint64_t bytes = 0;
};

// Each pattern is a file or a glob (*, ?, [...]); a glob's matches are taken in byte order of
// their names, patterns in the order given. Refused, each naming the pattern or file: a glob
// that matches nothing, a path that is not a regular file, the same file named twice.
std::vector<InputFile> expand_inputs(const std::vector<std::string>& patterns);

// One unit that becomes at most one document: a paragraph or line of a text file, or a non-blank
// line of a JSONL file (not parsed yet: workers parse it).
struct RawRecord {
  std::string text;
  uint32_t file = 0;   // index into the input list
  uint64_t line = 0;   // 1-based line where the record starts
};

struct RawBatch {
  int64_t index = 0;           // position in the stream of batches
  std::vector<RawRecord> records;
  uint64_t input_bytes = 0;    // bytes of input read for this batch
};

// Reads the inputs front to back with a fixed buffer (memory does not depend on file sizes,
// only on the longest line). Text files: `paragraphs` makes a record of each run of non-blank
// lines (joined by '\n'), else each non-blank line is one; a trailing '\r' is dropped from every
// line. A document never spans two files.
class CorpusReader {
 public:
  CorpusReader(const std::vector<InputFile>& files, bool paragraphs);
  ~CorpusReader();
  CorpusReader(const CorpusReader&) = delete;
  CorpusReader& operator=(const CorpusReader&) = delete;

  // Fills `batch` (cleared first) with records until about `batch_bytes` of input are read;
  // false once every file is read and nothing was left to return.
  bool next(RawBatch& batch, uint64_t batch_bytes);

 private:
  class LineReader;
  bool next_line(std::string_view& line);  // across files; false at the end of the last one
  void close_paragraph(RawBatch& batch);

  const std::vector<InputFile>& files_;
  bool paragraphs_;
  size_t file_ = 0;
  std::unique_ptr<LineReader> reader_;
  uint64_t bytes_before_ = 0;  // bytes of the files finished so far
  uint64_t reported_ = 0;      // bytes already counted in earlier batches
  std::string paragraph_;
  uint64_t paragraph_line_ = 0;
  int64_t next_index_ = 0;
};

// The document a record holds: the text itself, or the named string field of a JSONL record.
// Returns false for a blank document (skipped, as blank paragraphs are). A JSONL line that is not
// an object, lacks the field or holds a non-string there throws "<file>:<line>: ...".
bool record_document(RawRecord& record, const InputFile& file, const std::string& field, std::string& out);

}  // namespace moe::data
