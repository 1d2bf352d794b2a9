// The encoder-decoder's and span corruption's config keys (model.encoder_layers,
// model.decoder_seq_len, moe.decoder_every, objective.noise_density / mean_span_length): the
// lengths they must satisfy and the layouts and options refused, each error naming its keys.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "src/config/config.h"

using Catch::Contains;

namespace {

moe::Config parse_set(const std::vector<std::string>& overrides) {
  return moe::parse_config("", "bad.toml", overrides);
}

}  // namespace

TEST_CASE("encoder-decoder keys are validated; tensor and pipeline parallelism are refused naming the keys") {
  const std::vector<std::string> base = {"data.tokenizer=t.model", "model.objective=span_corruption",
                                         "model.num_layers=4", "model.encoder_layers=2", "model.decoder_seq_len=16"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> all = base;
    all.insert(all.end(), extra.begin(), extra.end());
    return parse_set(all);
  };
  // seq_len 64: raw windows of 70 tokens, 10 dropped in 3 spans: a target of 14 (16: 2 padded positions).
  const moe::Config ok = with({"moe.num_experts=4", "moe.every=2", "moe.decoder_every=1"});
  CHECK(ok.model.encoder_layers == 2);
  CHECK(ok.moe.decoder_every == 1);
  REQUIRE_THROWS_WITH(with({"model.decoder_seq_len=10"}),
                      Contains("model.decoder_seq_len = 10 is shorter than the span-corruption target of 14 tokens (10 "
                               "dropped tokens, 3 sentinels and EOS for model.seq_len = 64); set model.decoder_seq_len = 14"));
  REQUIRE_THROWS_WITH(with({"parallel.tp=2"}),
                      Contains("parallel.tp = 2: the encoder-decoder (model.encoder_layers = 2) does not run tensor "
                               "parallelism; set parallel.tp = 1"));
  REQUIRE_THROWS_WITH(with({"parallel.pp=2"}),
                      Contains("parallel.pp = 2: the encoder-decoder (model.encoder_layers = 2) does not run pipeline "
                               "parallelism; set parallel.pp = 1"));
  REQUIRE_THROWS_WITH(with({"train.recompute=true"}), Contains("train.recompute = true: the encoder-decoder"));
  REQUIRE_THROWS_WITH(with({"model.encoder_layers=4"}),
                      Contains("model.encoder_layers = 4: model.objective = 'span_corruption' trains an "
                               "encoder-decoder, so model.encoder_layers must be in [1, model.num_layers = 4)"));
  REQUIRE_THROWS_WITH(with({"model.encoder_layers=0"}), Contains("model.encoder_layers must be in [1, "));
  REQUIRE_THROWS_WITH(with({"model.objective=masked_lm"}),
                      Contains("model.encoder_layers = 2 builds an encoder-decoder, which model.objective = 'masked_lm' "
                               "does not train"));
  REQUIRE_THROWS_WITH(with({"objective.noise_density=0"}), Contains("objective.noise_density = 0 must be in (0, 1)"));
  REQUIRE_THROWS_WITH(with({"objective.mean_span_length=0.5"}),
                      Contains("objective.mean_span_length = 0.5 must be at least 1"));
  REQUIRE_THROWS_WITH(with({"moe.decoder_every=-1"}), Contains("moe.decoder_every = -1 must not be negative"));
  REQUIRE_THROWS_WITH(parse_set({"model.decoder_seq_len=8"}),
                      Contains("model.decoder_seq_len = 8 sizes a decoder, but model.encoder_layers = 0"));
  REQUIRE_THROWS_WITH(parse_set({"model.objective=span_corruption", "model.num_layers=4", "model.encoder_layers=2",
                                 "model.decoder_seq_len=16"}),
                      Contains("finds the sentinels <extra_id_i> by name in the tokenizer"));
  REQUIRE_THROWS_WITH(with({"model.positions=learned", "model.seq_len=8", "model.decoder_seq_len=9"}),
                      Contains("model.decoder_seq_len = 9 is longer than model.seq_len = 8"));
}
