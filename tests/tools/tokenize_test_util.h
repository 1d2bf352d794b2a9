// Helpers for the tokenize tests: a shard's tokens split at EOS and decoded back to documents.
#pragma once

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "src/data/indexed_dataset.h"
#include "src/data/tokenizer.h"

namespace moe::test {

// The documents of a token file (any format open_token_source reads), each ended by EOS.
inline std::vector<std::string> decode_documents(const std::string& path, const data::Tokenizer& tok) {
  const auto ds = data::open_token_source(path);
  std::vector<std::string> docs;
  std::vector<int32_t> current;
  for (uint32_t t : data::read_all_tokens(ds)) {
    if (static_cast<int32_t>(t) == tok.eos_id()) {
      docs.push_back(tok.decode(current));
      current.clear();
    } else {
      current.push_back(static_cast<int32_t>(t));
    }
  }
  REQUIRE(current.empty());  // every document ends with EOS
  return docs;
}

}  // namespace moe::test
