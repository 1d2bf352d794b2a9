// Validation of the encoder-decoder (model.encoder_layers) and of span corruption: the keys,
// the T5 lengths they imply, and the layouts and options the encoder-decoder refuses.
#include <string>

#include "src/config/config.h"
#include "src/config/config_fields.h"
#include "src/config/span_lengths.h"
#include "src/util/check.h"

namespace moe::config_internal {

namespace {

void validate_span_lengths(const Config& c, const KeyOrigins& at) {
  const ObjectiveConfig& o = c.objective;
  const ModelConfig& m = c.model;
  MOE_CHECK(o.noise_density > 0 && o.noise_density < 1, at.prefix({"objective.noise_density"}),
            "objective.noise_density = ", o.noise_density, " must be in (0, 1)");
  MOE_CHECK(o.mean_span_length >= 1, at.prefix({"objective.mean_span_length"}), "objective.mean_span_length = ",
            o.mean_span_length, " must be at least 1");
  MOE_CHECK(m.seq_len >= 3, at.prefix({"model.seq_len"}), "model.seq_len = ", m.seq_len,
            " is too short for span corruption (at least 3)");
  const SpanLengths s = span_lengths_for_inputs(m.seq_len, o.noise_density, o.mean_span_length);
  MOE_CHECK(s.inputs == m.seq_len && s.spans <= s.tokens - s.noise,
            at.prefix({"model.seq_len", "objective.noise_density", "objective.mean_span_length"}),
            "model.seq_len = ", m.seq_len, " is not the corrupted length of any raw window with objective.noise_density = ",
            o.noise_density, " and objective.mean_span_length = ", o.mean_span_length, "; use a longer model.seq_len");
  MOE_CHECK(m.decoder_seq_len >= s.targets, at.prefix({"model.decoder_seq_len", "model.seq_len"}),
            "model.decoder_seq_len = ", m.decoder_seq_len, " is shorter than the span-corruption target of ",
            s.targets, " tokens (", s.noise, " dropped tokens, ", s.spans, " sentinels and EOS for model.seq_len = ",
            m.seq_len, "); set model.decoder_seq_len = ", s.targets);
  MOE_CHECK(m.positions != "learned" || m.decoder_seq_len <= m.seq_len,
            at.prefix({"model.decoder_seq_len", "model.positions"}), "model.decoder_seq_len = ", m.decoder_seq_len,
            " is longer than model.seq_len = ", m.seq_len, ", the rows of the learned position table");
  MOE_CHECK(m.eos_id >= 0 && m.eos_id < m.vocab_size, at.prefix({"model.eos_id"}), "model.eos_id = ", m.eos_id,
            " is outside the vocabulary [0, model.vocab_size = ", m.vocab_size,
            "), but span corruption ends inputs and targets with it");
  MOE_CHECK(!c.data.tokenizer.empty(), at.prefix({"data.tokenizer", "model.objective"}),
            "model.objective = 'span_corruption' finds the sentinels <extra_id_i> by name in the tokenizer: set "
            "data.tokenizer to a SentencePiece model made by `moe tokenize --special-tokens`");
}

// What the encoder-decoder does not run: each names its key.
void validate_refusals(const Config& c, const KeyOrigins& at) {
  const std::string what = "the encoder-decoder (model.encoder_layers = " + std::to_string(c.model.encoder_layers) + ")";
  MOE_CHECK(c.parallel.tp == 1, at.prefix({"parallel.tp", "model.encoder_layers"}), "parallel.tp = ", c.parallel.tp,
            ": ", what, " does not run tensor parallelism; set parallel.tp = 1 (data, expert and ZeRO parallelism work)");
  MOE_CHECK(c.parallel.pp == 1, at.prefix({"parallel.pp", "model.encoder_layers"}), "parallel.pp = ", c.parallel.pp,
            ": ", what, " does not run pipeline parallelism; set parallel.pp = 1 (data, expert and ZeRO parallelism "
            "work)");
  MOE_CHECK(!c.train.recompute, at.prefix({"train.recompute", "model.encoder_layers"}), "train.recompute = true: ", what,
            " does not recompute activations; set train.recompute = false");
  MOE_CHECK(!c.model.reset_positions && !c.model.reset_attention,
            at.prefix({"model.reset_positions", "model.reset_attention", "model.encoder_layers"}),
            "model.reset_positions / model.reset_attention: ", what, " does not reset at document boundaries");
  MOE_CHECK(c.moe.num_experts == 0 || c.moe.hash_kind != "oracle", at.prefix({"moe.hash_kind", "model.encoder_layers"}),
            "moe.hash_kind = \"oracle\" routes on the next token, which ", what, "'s encoder does not predict");
  MOE_CHECK(c.moe.layer_routers.empty(), at.prefix({"moe.layer_routers", "model.encoder_layers"}),
            "moe.layer_routers: ", what, " uses moe.router in every MoE layer; remove moe.layer_routers");
}

}  // namespace

void validate_encoder_decoder(const Config& c, const KeyOrigins& at) {
  const ModelConfig& m = c.model;
  MOE_CHECK(c.moe.decoder_every >= 0, at.prefix({"moe.decoder_every"}), "moe.decoder_every = ", c.moe.decoder_every,
            " must not be negative (0 = moe.every)");
  const bool span = m.objective == "span_corruption";
  if (!span && m.encoder_layers == 0) {
    MOE_CHECK(m.decoder_seq_len == 0, at.prefix({"model.decoder_seq_len", "model.encoder_layers"}),
              "model.decoder_seq_len = ", m.decoder_seq_len, " sizes a decoder, but model.encoder_layers = 0");
    MOE_CHECK(c.moe.decoder_every == 0, at.prefix({"moe.decoder_every", "model.encoder_layers"}),
              "moe.decoder_every = ", c.moe.decoder_every, " places MoE layers in a decoder, but model.encoder_layers = 0");
    return;
  }
  MOE_CHECK(span, at.prefix({"model.encoder_layers", "model.objective"}), "model.encoder_layers = ", m.encoder_layers,
            " builds an encoder-decoder, which model.objective = '", m.objective,
            "' does not train; use model.objective = 'span_corruption' or model.encoder_layers = 0");
  MOE_CHECK(m.encoder_layers > 0 && m.encoder_layers < m.num_layers,
            at.prefix({"model.encoder_layers", "model.num_layers"}), "model.encoder_layers = ", m.encoder_layers,
            ": model.objective = 'span_corruption' trains an encoder-decoder, so model.encoder_layers must be in [1, "
            "model.num_layers = ", m.num_layers, ") (the encoder's layers; the rest are the decoder's)");
  MOE_CHECK(c.moe.first_dense <= m.encoder_layers && c.moe.first_dense <= m.num_layers - m.encoder_layers,
            at.prefix({"moe.first_dense", "model.encoder_layers"}), "moe.first_dense = ", c.moe.first_dense,
            " counts dense layers at the start of each stack, but the encoder has ", m.encoder_layers,
            " layers and the decoder ", m.num_layers - m.encoder_layers);
  validate_span_lengths(c, at);
  validate_refusals(c, at);
}

}  // namespace moe::config_internal
