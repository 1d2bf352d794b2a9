// `moe generate --checkpoint DIR|RUN_DIR|latest [--prompt TEXT | --prompts FILE]`: continues prompts
// with a trained model, KV-cached (or --no-cache: the full window every token), greedy or sampled;
// an encoder-decoder (span corruption) fills the <extra_id_i> spans of its prompts instead.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "src/cli/commands.h"
#include "src/cli/run_setup.h"
#include "src/data/tokenizer.h"
#include "src/model/generation.h"
#include "src/model/span_filling.h"
#include "src/tools/generate_text.h"
#include "src/tools/span_text.h"
#include "src/util/log.h"

namespace moe {

namespace {

struct GenerateOptions {
  std::string checkpoint, run_dir = TrainConfig{}.run_dir, prompt = "The", prompts_file, jsonl_field, tokenizer,
      device = "auto";
  std::vector<std::string> stops;
  GenerationOptions generation{64, {0.8, 0.95, 0}, 1, true};
  bool verify = true;  // the checkpoint's checksums
};

struct LoadedModel {
  InferenceModel inference;
  data::Tokenizer tokenizer;
};

LoadedModel load_model(const GenerateOptions& o) {
  const std::string checkpoint = resolve_checkpoint_arg("--checkpoint", o.checkpoint, o.run_dir);
  LoadedModel m{load_inference_model(checkpoint, o.device, o.verify), {}};
  const Config& config = m.inference.config;
  std::string tokenizer_path = o.tokenizer.empty() ? config.data.tokenizer : o.tokenizer;
  MOE_CHECK(!tokenizer_path.empty(), "no tokenizer: set data.tokenizer in the config or pass --tokenizer");
  m.tokenizer = data::Tokenizer::load(tokenizer_path);
  MOE_CHECK(m.tokenizer.vocab_size() <= config.model.vocab_size, "the tokenizer has ", m.tokenizer.vocab_size(),
            " tokens but model.vocab_size is ", config.model.vocab_size);
  return m;
}

const char* stop_reason_text(StopReason reason) {
  switch (reason) {
    case StopReason::eos: return "stopped at the end-of-sequence token";
    case StopReason::stop: return "stopped at a --stop string";
    case StopReason::length: return "--max-new-tokens reached";
  }
  return "?";
}

// An encoder-decoder fills the marked spans of each prompt: the filled text on stdout (one prompt)
// or one JSON line per prompt with the text and the spans.
int run_fill_spans(const GenerateOptions& o, const LoadedModel& m, const std::vector<std::string>& texts, bool batch) {
  const Config& config = m.inference.config;
  std::vector<std::vector<int32_t>> inputs;
  std::vector<std::vector<int32_t>> sentinels;
  for (const std::string& text : texts) {
    CorruptedText corrupted = encode_corrupted(m.tokenizer, text, static_cast<int32_t>(config.model.eos_id));
    inputs.push_back(std::move(corrupted.ids));
    sentinels.push_back(std::move(corrupted.sentinels));
  }
  GenerationOptions g = o.generation;
  g.eos_id = static_cast<int32_t>(config.model.eos_id);
  g.vocab_limit = m.tokenizer.vocab_size();
  const std::vector<Generated> out = fill_spans(*m.inference.model, inputs, g);
  for (size_t b = 0; b < out.size(); ++b) {
    const auto spans = target_spans(out[b].tokens, sentinels[b]);
    const std::string filled = fill_markers(m.tokenizer, texts[b], spans);
    if (!batch) {
      std::printf("%s\n", filled.c_str());
      log::info("generate: filled {} span(s) with {} target tokens ({}; an encoder-decoder fills the <extra_id_i> "
                "spans of its input)", spans.size(), out[b].tokens.size(), stop_reason_text(out[b].reason));
      continue;
    }
    nlohmann::json line{{"index", b}, {"prompt", texts[b]}, {"text", filled}, {"new_tokens", out[b].tokens.size()},
                        {"stop_reason", stop_reason_name(out[b].reason)}};
    for (const auto& span : spans) line["spans"].push_back(m.tokenizer.decode(span));
    std::printf("%s\n", line.dump().c_str());
  }
  return 0;
}

int run_generate(const GenerateOptions& o) {
  const bool batch = !o.prompts_file.empty();
  MOE_CHECK(o.jsonl_field.empty() || batch, "--jsonl-field reads the records of --prompts FILE, but no --prompts was given");
  const bool jsonl = !o.jsonl_field.empty() || o.prompts_file.ends_with(".jsonl");
  const std::vector<std::string> texts =
      batch ? read_prompts(o.prompts_file, jsonl, o.jsonl_field.empty() ? "text" : o.jsonl_field)
            : std::vector<std::string>{o.prompt};
  std::vector<StopText> stops(texts.size(), StopText(o.stops));
  LoadedModel m = load_model(o);
  if (m.inference.model->is_encoder_decoder()) {
    MOE_CHECK(o.stops.empty(), "--stop: an encoder-decoder fills the marked spans of its prompt and stops at EOS");
    return run_fill_spans(o, m, texts, batch);
  }
  std::vector<std::vector<int32_t>> prompts, generated(texts.size());
  std::vector<std::string> prompt_texts;
  for (size_t i = 0; i < texts.size(); ++i) {
    prompts.push_back(m.tokenizer.encode(texts[i]));
    MOE_CHECK(!prompts.back().empty(), batch ? "prompt " + std::to_string(i + 1) + " of --prompts" : std::string("the prompt"),
              " encodes to no tokens");
    prompt_texts.push_back(m.tokenizer.decode(prompts.back()));
  }
  GenerationOptions g = o.generation;
  g.eos_id = m.tokenizer.eos_id();
  g.vocab_limit = m.tokenizer.vocab_size();  // ids past the tokenizer's pieces have no text: never drawn
  // Streaming (one prompt): the prompt once the first token is in (an error before it leaves stdout
  // empty), then each piece of text as it is decoded.
  bool prompt_shown = false;
  auto show = [&](const std::string& text) {
    if (!prompt_shown) std::fputs(prompt_texts[0].c_str(), stdout);
    prompt_shown = true;
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  };
  auto sink = [&](size_t b, int32_t token) {
    generated[b].push_back(token);
    std::vector<int32_t> all = prompts[b];
    all.insert(all.end(), generated[b].begin(), generated[b].end());
    const std::string full = m.tokenizer.decode(all);
    // The continuation is the text past the prompt's (decoding keeps that prefix in practice).
    const bool stop = stops[b].update(full.compare(0, prompt_texts[b].size(), prompt_texts[b]) == 0
                                          ? full.substr(prompt_texts[b].size()) : full);
    if (!batch) show(stops[b].take_printable(false));
    return !stop;
  };
  std::vector<Generated> out = generate(*m.inference.model, prompts, g, sink);
  for (size_t b = 0; b < out.size(); ++b) {
    if (!batch) {
      show(stops[b].take_printable(true) + "\n");
      // On stderr, so stdout stays the text alone: how much was generated and why it stopped.
      log::info("generate: {} new tokens after a {}-token prompt ({})", out[b].tokens.size(), prompts[b].size(),
                stop_reason_text(out[b].reason));
      continue;
    }
    nlohmann::json line{{"index", b},           {"prompt", texts[b]},
                        {"text", stops[b].text()}, {"new_tokens", out[b].tokens.size()},
                        {"stop_reason", stop_reason_name(out[b].reason)}};
    if (out[b].reason == StopReason::stop) line["stop"] = stops[b].stop_found();
    std::printf("%s\n", line.dump().c_str());
  }
  if (batch) log::info("generate: {} prompts from {}", out.size(), o.prompts_file);
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("generate", "continue prompts with a trained checkpoint");
  auto o = std::make_shared<GenerateOptions>();
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint directory (holds config.toml), a run directory (its newest checkpoint), or 'latest'")
      ->required();
  cmd->add_option("--run-dir", o->run_dir, "run directory where --checkpoint latest looks");
  auto* prompt = cmd->add_option("--prompt", o->prompt, "text to continue (streamed to stdout as it is generated)");
  cmd->add_option("--prompts", o->prompts_file,
                  "a batch: one prompt per line, or JSONL (a .jsonl file or --jsonl-field); one JSON line per prompt out")
      ->excludes(prompt);
  cmd->add_option("--jsonl-field", o->jsonl_field, "the string field of each --prompts JSONL record (default: text)");
  cmd->add_option("--max-new-tokens", o->generation.max_new_tokens, "tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", o->generation.sampling.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->generation.sampling.top_p, "nucleus sampling mass")->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--top-k", o->generation.sampling.top_k, "sample among the k likeliest tokens (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--stop", o->stops, "end a sequence where this text appears (repeatable; the text is cut before it)");
  cmd->add_option("--seed", o->generation.seed, "sampling seed (prompt i of a batch uses seed + i)");
  cmd->add_flag("!--no-cache", o->generation.use_cache,
                "rerun the model on the whole window for every token (the reference path; no KV cache)");
  cmd->add_option("--tokenizer", o->tokenizer, "SentencePiece model (default: data.tokenizer of the config)");
  cmd->add_option("--device", o->device, "auto | cpu | cuda");
  cmd->add_flag("!--no-verify", o->verify, "skip the checkpoint files' CRC-32C check (very large checkpoints)");
  cmd->callback([&run, o] {
    log::human_to_stderr();  // at parse time: stdout is the generated text alone
    run = [o](MpiEnv&) { return run_generate(*o); };
  });
}

}  // namespace moe
