// Text with T5 sentinel markers (`<extra_id_0>`, ...) for span filling: encoding it with the
// sentinels' ids in place, and writing the filled spans back into it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/data/tokenizer.h"

namespace moe {

struct CorruptedText {
  std::vector<int32_t> ids;        // the text's pieces, each marker's sentinel id, then eos
  std::vector<int32_t> sentinels;  // the ids of <extra_id_0> .. <extra_id_{max marker}>
};

// Splits text at its markers, encodes the pieces between them and puts each marker's id from the
// tokenizer between them; eos last. A text without markers, or a marker the tokenizer does not
// have, is an error naming it.
CorruptedText encode_corrupted(const data::Tokenizer& tokenizer, const std::string& text, int32_t eos);

// The text with marker i replaced by the decoded spans[i] (a marker past spans stays as it is).
std::string fill_markers(const data::Tokenizer& tokenizer, const std::string& text,
                         const std::vector<std::vector<int32_t>>& spans);

}  // namespace moe
