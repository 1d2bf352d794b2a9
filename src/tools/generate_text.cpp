// Prompt files (plain lines or JSONL) and stop strings over a streamed continuation.
#include "src/tools/generate_text.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "src/util/check.h"

namespace moe {

std::vector<std::string> read_prompts(const std::string& path, bool jsonl, const std::string& field) {
  std::ifstream in(path);
  MOE_CHECK(in, "--prompts ", path, ": cannot open the file");
  std::vector<std::string> prompts;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!jsonl) {
      prompts.push_back(line);
      continue;
    }
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    MOE_CHECK(!record.is_discarded(), "--prompts ", path, ":", number, ": not a JSON line");
    MOE_CHECK(record.is_object() && record.contains(field) && record[field].is_string(), "--prompts ", path, ":",
              number, ": no string field '", field, "' (--jsonl-field)");
    prompts.push_back(record[field].get<std::string>());
  }
  MOE_CHECK(!prompts.empty(), "--prompts ", path, " holds no prompts");
  return prompts;
}

StopText::StopText(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& stop : stops_) MOE_CHECK(!stop.empty(), "--stop: a stop string must not be empty");
}

bool StopText::update(const std::string& continuation) {
  if (!found_.empty()) return true;
  size_t cut = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t at = continuation.find(stop);
    if (at < cut) {
      cut = at;
      found_ = stop;
    }
  }
  text_ = continuation.substr(0, cut);
  return !found_.empty();
}

std::string StopText::take_printable(bool final) {
  size_t end = text_.size();
  if (!final && found_.empty()) {
    // Hold back a tail that is a proper prefix of some stop string ...
    for (const std::string& stop : stops_) {
      for (size_t n = std::min(stop.size() - 1, text_.size()); n > 0; --n) {
        if (text_.compare(text_.size() - n, n, stop, 0, n) == 0) {
          end = std::min(end, text_.size() - n);
          break;
        }
      }
    }
    // ... and an unfinished UTF-8 character (a lead byte without all its continuation bytes).
    for (size_t back = 1; back <= 4 && back <= end; ++back) {
      const auto byte = static_cast<unsigned char>(text_[end - back]);
      if ((byte & 0xC0) == 0x80) continue;  // a continuation byte: look further back
      const size_t need = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
      if (need > back) end -= back;
      break;
    }
  }
  if (end <= printed_) return "";
  std::string out = text_.substr(printed_, end - printed_);
  printed_ = end;
  return out;
}

}  // namespace moe
