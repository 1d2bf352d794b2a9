// `moe tokenize --input TEXT --out DIR [--vocab-size N | --tokenizer MODEL]`: trains (or takes)
// a SentencePiece tokenizer and writes train.tok / val.tok token shards.
#include <iostream>

#include "src/cli/commands.h"
#include "src/tools/tokenize_command.h"

namespace moe {

void add_tokenize_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("tokenize", "text corpus -> tokenizer + token shards");
  auto o = std::make_shared<data::TokenizeOptions>();
  cmd->add_option("--input", o->input, "UTF-8 text corpus")->required();
  cmd->add_option("--out", o->out_dir, "output directory (train.tok, val.tok, tokenizer.model)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "use this SentencePiece .model instead of training one");
  cmd->add_option("--vocab-size", o->vocab_size, "vocabulary of a trained tokenizer")->check(CLI::PositiveNumber);
  cmd->add_option("--documents", o->documents, "paragraphs | lines");
  cmd->add_option("--val-fraction", o->val_fraction, "fraction of documents for validation")->check(CLI::Range(0.0, 0.9));
  cmd->add_option("--seed", o->seed, "split and tokenizer-training seed");
  cmd->callback([&run, o] {
    run = [o](MpiEnv&) {
      data::run_tokenize(*o, std::cout);
      return 0;
    };
  });
}

}  // namespace moe
