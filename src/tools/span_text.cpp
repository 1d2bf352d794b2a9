// Sentinel markers in text: found by a regex, encoded as the tokenizer's control pieces (which
// text never encodes to), and replaced by generated spans.
#include "src/tools/span_text.h"

#include <regex>

#include "src/util/check.h"

namespace moe {

namespace {

const std::regex& marker_regex() {
  static const std::regex re("<extra_id_([0-9]+)>");
  return re;
}

}  // namespace

CorruptedText encode_corrupted(const data::Tokenizer& tokenizer, const std::string& text, int32_t eos) {
  CorruptedText out;
  size_t at = 0;
  int64_t max_marker = -1;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), marker_regex()); it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    const std::vector<int32_t> piece = tokenizer.encode(text.substr(at, static_cast<size_t>(m.position(0)) - at));
    out.ids.insert(out.ids.end(), piece.begin(), piece.end());
    const int32_t id = tokenizer.piece_id(m.str(0));
    MOE_CHECK(id >= 0, "the tokenizer ", tokenizer.path(), " has no ", m.str(0),
              " piece (make it with `moe tokenize --special-tokens`)");
    out.ids.push_back(id);
    max_marker = std::max<int64_t>(max_marker, std::stoll(m.str(1)));
    at = static_cast<size_t>(m.position(0) + m.length(0));
  }
  MOE_CHECK(max_marker >= 0, "span filling needs the places to fill marked in the text as <extra_id_0>, "
            "<extra_id_1>, ... (T5's sentinels), but \"", text, "\" has none");
  const std::vector<int32_t> tail = tokenizer.encode(text.substr(at));
  out.ids.insert(out.ids.end(), tail.begin(), tail.end());
  out.ids.push_back(eos);
  for (int64_t i = 0; i <= max_marker; ++i) {
    const std::string piece = "<extra_id_" + std::to_string(i) + ">";
    const int32_t id = tokenizer.piece_id(piece);
    MOE_CHECK(id >= 0, "the tokenizer ", tokenizer.path(), " has no ", piece,
              " piece (make it with `moe tokenize --special-tokens`)");
    out.sentinels.push_back(id);
  }
  return out;
}

std::string fill_markers(const data::Tokenizer& tokenizer, const std::string& text,
                         const std::vector<std::vector<int32_t>>& spans) {
  std::string out;
  size_t at = 0;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), marker_regex()); it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    out += text.substr(at, static_cast<size_t>(m.position(0)) - at);
    const auto i = static_cast<size_t>(std::stoll(m.str(1)));
    out += i < spans.size() ? tokenizer.decode(spans[i]) : m.str(0);
    at = static_cast<size_t>(m.position(0) + m.length(0));
  }
  return out + text.substr(at);
}

}  // namespace moe
