// Generation throughput: random prompts, greedy decoding to a fixed length, timed on the host
// (each step reads its logits back, as generation does).
#include "src/tools/bench_generate.h"

#include <random>

#include "src/model/generation.h"
#include "src/util/check.h"

namespace moe {

namespace {

nlohmann::json timing_json(const GenerationTiming& t, int64_t prompt_tokens, int64_t decode_tokens) {
  auto rate = [](double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; };
  return {{"prefill_s", t.prefill_seconds},
          {"decode_s", t.decode_seconds},
          {"prefill_tokens_per_s", rate(static_cast<double>(prompt_tokens), t.prefill_seconds)},
          {"decode_tokens_per_s", rate(static_cast<double>(decode_tokens), t.decode_seconds)}};
}

}  // namespace

nlohmann::json bench_generate(const Model& model, GenerateBenchOptions o) {
  const int64_t seq = model.config().seq_len;
  if (o.prompt_len == 0) o.prompt_len = std::max<int64_t>(1, seq / 2);
  if (o.new_tokens == 0) o.new_tokens = std::max<int64_t>(1, seq - o.prompt_len);
  MOE_CHECK(o.batch >= 1 && o.prompt_len >= 1 && o.new_tokens >= 1, "bench generate: --batch, --prompt-len and "
            "--new-tokens must be positive");
  MOE_CHECK(o.prompt_len + o.new_tokens <= seq, "bench generate: --prompt-len ", o.prompt_len, " + --new-tokens ",
            o.new_tokens, " exceed model.seq_len = ", seq, " (past it the cached path reruns the sliding window)");
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(model.config().vocab_size - 1));
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(o.batch));
  for (auto& p : prompts) {
    for (int64_t i = 0; i < o.prompt_len; ++i) p.push_back(token(rng));
  }
  nlohmann::json out{{"batch", o.batch}, {"prompt_len", o.prompt_len}, {"new_tokens", o.new_tokens}};
  for (bool cache : {true, false}) {
    GenerationOptions warm;
    warm.max_new_tokens = 2;
    warm.sampling = {0, 1, 0};
    warm.use_cache = cache;
    generate(model, prompts, warm);
    GenerationOptions g;
    g.max_new_tokens = o.new_tokens;
    g.sampling = {0, 1, 0};
    g.use_cache = cache;
    GenerationTiming t;
    generate(model, prompts, g, nullptr, &t);
    out[cache ? "cached" : "uncached"] = timing_json(t, o.batch * o.prompt_len, o.batch * (o.new_tokens - 1));
  }
  const double uncached = out["uncached"]["decode_tokens_per_s"].get<double>();
  out["decode_speedup"] = uncached > 0 ? out["cached"]["decode_tokens_per_s"].get<double>() / uncached : 0.0;
  return out;
}

}  // namespace moe
