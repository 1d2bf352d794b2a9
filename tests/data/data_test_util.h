// Helpers for the data tests: a self-deleting temporary directory, raw file writes and a
// seeded generator of English-like text (so no test depends on a downloaded corpus).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace moe::test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "moe_data_test_XXXXXX").string();
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    char* made = ::mkdtemp(buf.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
void append_le(std::string& bytes, T value) {
  bytes.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

// `num_sentences` lines of 4..14 words drawn from a fixed word list, with digits and
// punctuation, seeded (the same text every run).
inline std::vector<std::string> generated_sentences(int num_sentences, uint64_t seed) {
  static const char* words[] = {
      "the", "jury", "said", "county", "election", "was", "conducted", "city", "of", "atlanta",
      "fulton", "report", "primary", "and", "that", "investigation", "produced", "no", "evidence",
      "irregularities", "took", "place", "further", "presentments", "committee", "charge", "praise",
      "thanks", "manner", "in", "which", "Mayor", "court", "judge", "voters", "number", "size",
      "widespread", "interest", "laws", "registration", "outmoded", "inadequate", "often", "ambiguous"};
  const int num_words = static_cast<int>(sizeof(words) / sizeof(words[0]));
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  for (int s = 0; s < num_sentences; ++s) {
    int len = 4 + static_cast<int>(rng() % 11);
    std::string line;
    for (int w = 0; w < len; ++w) {
      if (w > 0) line += ' ';
      line += words[rng() % num_words];
      if (rng() % 9 == 0) line += ",";
      if (rng() % 13 == 0) line += " " + std::to_string(rng() % 2000);
    }
    line += '.';
    out.push_back(line);
  }
  return out;
}

}  // namespace moe::test
