// `moe tokenize --input FILE|GLOB... --out DIR [--vocab-size N | --tokenizer MODEL]`: trains (or
// takes) a SentencePiece tokenizer and writes train / val token shards (native or Megatron).
#include <memory>

#include "src/cli/commands.h"
#include "src/tools/tokenize_command.h"
#include "src/util/log.h"
#include "src/util/progress.h"

namespace moe {

void add_tokenize_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("tokenize", "text or JSONL corpora -> tokenizer + token shards");
  auto o = std::make_shared<data::TokenizeOptions>();
  auto sample_mb = std::make_shared<double>(100);
  cmd->add_option("--input", o->inputs, "text or JSONL files, or globs (quoted); .jsonl/.ndjson/.json are JSONL")
      ->required();
  cmd->add_option("--jsonl-field", o->jsonl_field, "field of a JSONL record that holds the document (text)");
  cmd->add_option("--out", o->out_dir, "output directory (shards, tokenizer.model, manifest.json)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "use this SentencePiece .model instead of training one");
  cmd->add_option("--vocab-size", o->vocab_size, "vocabulary of a trained tokenizer")->check(CLI::PositiveNumber);
  cmd->add_flag("--special-tokens", o->special_tokens,
                "reserve [MASK], [CLS], [SEP] and the T5 sentinels <extra_id_i> (ids 3, 4, ...)");
  cmd->add_option("--sentinels", o->num_sentinels, "T5 sentinels reserved by --special-tokens")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--documents", o->documents, "text files: paragraphs | lines");
  cmd->add_option("--val-fraction", o->val_fraction, "fraction of documents for validation")->check(CLI::Range(0.0, 0.9));
  cmd->add_option("--seed", o->seed, "split, tokenizer sample and tokenizer-training seed");
  cmd->add_option("--format", o->format, "native (.tok) | megatron (.bin/.idx, Megatron-LM's IndexedDataset)");
  cmd->add_option("--shard-tokens", o->shard_tokens, "shards of whole documents of at least N tokens (0: one file)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", o->num_threads, "encoding threads (0: every core); the output does not depend on it")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--train-threads", o->train_threads, "tokenizer training threads (1: byte-identical models)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--sample-mb", *sample_mb, "tokenizer training text sampled from the corpus, MB (0: all of it)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--progress-seconds", o->progress_seconds, "a progress line at most this often")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([&run, o, sample_mb] {
    o->sample_bytes = static_cast<int64_t>(*sample_mb * 1e6);
    run = [o](MpiEnv&) {
      // The summary through the logger; the progress lines through the display (one line
      // rewritten in place on a terminal, refreshed often; else the paced lines logged).
      ProgressDisplay display;
      if (display.mode() == ProgressDisplay::Mode::terminal) o->progress_seconds = ProgressDisplay::k_refresh_seconds;
      log::LineStream progress([&display](std::string_view line) { display.show(line); });
      log::LineStream lines(log::Level::info);
      data::run_tokenize(*o, lines, &progress);
      return 0;
    };
  });
}

}  // namespace moe
