// Text around generation (`moe generate`): prompts read from a file or JSONL, and the
// continuation cut at stop strings while it streams out.
#pragma once

#include <string>
#include <vector>

namespace moe {

// The prompts of `--prompts FILE`: one per non-empty line, or with jsonl the string field `field`
// of each non-empty JSON line. Errors name the file, the line and what is wrong.
std::vector<std::string> read_prompts(const std::string& path, bool jsonl, const std::string& field);

// A sequence's continuation as its tokens arrive: cut before the first stop string, and streamed
// out without the tail that could still grow into a stop string or is an unfinished UTF-8 character.
class StopText {
 public:
  // Throws on an empty stop string (it would stop before the first token).
  explicit StopText(std::vector<std::string> stops);
  // The continuation decoded so far (the full text, each time) -> whether a stop string occurs in
  // it; from then on text() ends before it and further updates are ignored.
  bool update(const std::string& continuation);
  const std::string& text() const { return text_; }
  const std::string& stop_found() const { return found_; }
  // The text not returned before that is safe to print now; final: all of the rest.
  std::string take_printable(bool final);

 private:
  std::vector<std::string> stops_;
  std::string text_, found_;
  size_t printed_ = 0;
};

}  // namespace moe
