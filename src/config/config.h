// The run configuration: one typed struct per TOML section, parsed in one place (config_parse.cpp)
// and validated in one function. Every key is documented in docs/config.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct ModelConfig {              // [model]
  int64_t vocab_size = 512;
  int64_t d_model = 128;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 4;       // < num_heads: grouped-query attention
  int64_t seq_len = 64;
  std::string norm = "rmsnorm";   // rmsnorm | layernorm
  double norm_eps = 1e-5;
  std::string positions = "rope"; // rope | learned
  double rope_theta = 10000.0;
  // Rope scaling (Hugging Face rope_scaling): none | linear (frequencies / factor) | llama3
  // (Llama 3.1: long wavelengths / factor, a smooth band between low and high_freq_factor).
  std::string rope_scaling = "none";
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;          // llama3
  double rope_high_freq_factor = 4.0;         // llama3
  int64_t rope_original_max_positions = 8192; // llama3: original_max_position_embeddings
  std::string attention_bias = "none";  // none | qkv (Qwen2) | all (q, k, v and output: GPT-2, Llama)
  bool ffn_bias = false;          // biases on the dense FFN's up (gate|up) and down projections
  bool qk_norm = false;           // RMSNorm over the whole q and k projections before rope (OLMoE)
  std::string activation = "swiglu";  // relu | gelu | geglu | swiglu (dense FFNs)
  int64_t d_ff = 512;
  bool tie_embeddings = true;
  double init_std = 0.02;
  std::string objective = "causal_lm";  // causal_lm (next-token prediction) | masked_lm (BERT) | span_corruption (T5); [objective]
  // Encoder-decoder (span_corruption): layers [0, encoder_layers) of num_layers are the encoder
  // (bidirectional, over seq_len positions), the rest the decoder (causal self-attention and
  // cross-attention, over decoder_seq_len positions). 0 = a single stack.
  int64_t encoder_layers = 0;
  int64_t decoder_seq_len = 0;
  // Documents packed into a sequence end with eos_id (docs/data.md): positions (rope or learned)
  // can restart at 0 after each, and attention can stay inside each token's document.
  bool reset_positions = false;
  bool reset_attention = false;
  int64_t eos_id = 2;             // </s> of `moe tokenize` (SentencePiece); read when a reset is on

  bool operator==(const ModelConfig&) const = default;
};

// The choices of model.objective (docs/objectives.md).
struct ObjectiveConfig {          // [objective]
  // masked_lm: round(mask_rate * seq_len) positions of each sequence (at least 1) are selected
  // and predicted; of those, each becomes [MASK] with probability mask_token_rate, a uniformly
  // random token with random_token_rate, else stays unchanged (BERT: 0.15, 0.8, 0.1).
  double mask_rate = 0.15;
  double mask_token_rate = 0.8;
  double random_token_rate = 0.1;
  // masked_lm: BERT's next-sentence prediction. Each sequence is [CLS] A [SEP] B [SEP]; B follows A
  // in the data, or (half the time) comes from a random other place; a [d, 2] head on [CLS]'s
  // final hidden state classifies the pair and its cross-entropy is added to the MLM loss.
  bool nsp = false;
  // span_corruption (T5's random_spans_noise_mask): round(noise_density * L) tokens of a raw
  // window of L are dropped, in round(noise / mean_span_length) spans.
  double noise_density = 0.15;
  double mean_span_length = 3.0;

  bool operator==(const ObjectiveConfig&) const = default;
};

struct MoeConfig {                // [moe]
  int64_t num_experts = 0;        // 0 = no MoE layers (a dense model)
  int64_t top_k = 2;
  int64_t d_expert = 256;
  bool renormalize = true;        // renormalise the selected top-k weights to sum to 1
  std::string activation = "";    // expert activation; "" = model.activation
  int64_t every = 1;              // MoE at every n-th layer (layer i with (i+1-first_dense) % every == 0)
  int64_t first_dense = 0;        // the first k layers stay dense (of each stack in an encoder-decoder)
  int64_t decoder_every = 0;      // encoder-decoder: MoE at every n-th decoder layer; 0 = moe.every
  double aux_loss_coef = 0.01;    // Switch load-balancing loss alpha
  std::string balance_scope = "micro_batch";  // Switch f_i, P_i over: micro_batch (per rank) | global_batch
  std::string aux_count = "routed";  // Switch f_i counts: routed (before capacity dropping) | kept
  // Routing (docs/config.md has the exact definitions).
  std::string router = "softmax_topk";  // a kind of src/config/router_kinds.cpp (docs/config.md lists them)
  std::vector<std::string> layer_routers;  // per MoE layer (in layer order), overriding router; [] = all use router
  int64_t num_groups = 0;         // group-limited routing: contiguous expert groups (0 = off)
  int64_t top_groups = 0;         // groups a token may use
  double capacity_factor = 0.0;   // token choice: capacity = ceil(C*k*T/E), 0 = dropless; expert choice: c*T/E
  std::string drop_order = "probability";  // probability | position
  int64_t granularity = 1;        // fine-grained segmentation m: m*E experts of d_expert/m, m*k active
  int64_t num_shared_experts = 0; // always-active experts (DeepSeekMoE, Qwen2-MoE)
  int64_t d_shared = 0;           // width of each shared expert; 0 = d_expert (after granularity)
  bool shared_gate = false;       // Qwen2-MoE: shared output times sigmoid(x . w_gate)
  double expert_bias_rate = 0.0;  // aux-loss-free balancing gamma (0 = off)
  double importance_loss_coef = 0.0;
  double load_loss_coef = 0.0;    // needs a router with gating noise in every MoE layer
  double z_loss_coef = 0.0;
  double seq_aux_loss_coef = 0.0;
  double device_loss_coef = 0.0;
  int64_t device_groups = 0;      // expert groups of the device-level loss
  std::string hash_kind = "random";  // random | balanced | clustering | dispersed | position | bigram | previous_token | oracle
  std::string hash_table = "";    // table file from `moe hash-table` (balanced, clustering, dispersed)
  bool hash_per_layer = false;    // a different table per hashed layer (seed mixed with the layer)
  bool hash_allow_oracle = false; // required for the future-token oracle
  uint64_t hash_seed = 0;
  std::string experts_impl = "auto"; // auto (the fastest registered) | loop; checked where the layers are built
  int64_t hash_count = 2;         // router = "multihash": hashes per token, each picking one expert

  bool operator==(const MoeConfig&) const = default;
};

struct TrainConfig {              // [train]
  int64_t steps = 100;
  uint64_t seed = 1234;
  int64_t micro_batch_size = 8;   // sequences per micro-batch per rank
  int64_t grad_accum = 1;         // micro-batches per step per rank
  int64_t log_every = 10;
  int64_t eval_every = 50;        // 0 = never (the final step always evaluates)
  int64_t eval_batches = 8;
  int64_t save_every = 0;         // 0 = only at the end
  std::string run_dir = "runs/default";
  std::string resume = "";        // "" | "latest" | a checkpoint directory
  std::string init_from = "";     // a fresh run starts from these weights (a checkpoint or run directory)
  bool overwrite = false;         // a fresh run may clear run_dir's old checkpoints and metrics
  int64_t keep_last = 0;          // checkpoints kept after each save (0 = all)
  std::string device = "auto";    // auto | cpu | cuda
  std::string dtype = "";         // "" = f32 on cpu, bf16 on cuda; f64 allowed on cpu
  bool recompute = false;         // activation recomputation: keep only each block's input, rerun its forward in backward
  int64_t head_chunk_tokens = 4096;  // LM head + loss in chunks of this many tokens, gradient made in forward; 0 = keep logits
  bool verify_checkpoints = true; // check each loaded checkpoint file's CRC-32C against its checksums.json
  std::string nonfinite = "stop";  // a non-finite or spiking loss / gradient norm: "stop" | "skip_step" (the update)
  int64_t max_skipped_steps = 10;  // skip_step: the run stops after this many consecutive skipped steps
  double loss_spike_factor = 100;  // a loss above factor x the mean of the last 20 is treated as non-finite; 0 = off
  double peak_tflops = 0;          // MFU's peak per GPU, dense bf16 TFLOP/s; 0 = the datasheet's for the device name

  bool operator==(const TrainConfig&) const = default;
};

struct OptimConfig {              // [optim]
  double lr = 3e-3;
  double min_lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_norms_and_biases = false;
  bool decay_embeddings = false;
  double grad_clip = 1.0;         // 0 = no clipping

  bool operator==(const OptimConfig&) const = default;
};

struct ScheduleConfig {           // [schedule]
  std::string kind = "cosine";    // cosine | linear | constant | step | wsd
  int64_t warmup_steps = 10;
  std::vector<double> step_fractions = {0.8, 0.9};  // step: where the LR is multiplied by step_factor
  double step_factor = 0.316;
  double decay_fraction = 0.2;    // wsd: the final fraction of steps that decays to min_lr

  bool operator==(const ScheduleConfig&) const = default;
};

// One dataset of a split, an entry of data.train or data.val: { path = "..." } or
// { paths = ["...", ...] } (files or glob patterns), and for training a blending weight.
struct DataSource {
  std::vector<std::string> paths;
  double weight = 1.0;

  bool operator==(const DataSource&) const = default;
};

struct DataConfig {               // [data]
  std::string train_path = "";    // one token shard (.tok native, llm.c .bin, Megatron .bin/.idx/prefix); or data.train
  std::string val_path = "";      // or data.val
  std::string tokenizer = "";     // SentencePiece .model (needed by generate)
  std::vector<DataSource> train;  // datasets blended by weight, each of one or more shards
  std::vector<DataSource> val;    // validation datasets: every window of every shard, in order
  std::string sampling = "epochs";  // epochs (shuffled windows, epoch by epoch) | random_windows
  // Training step s reads the global batch s + skip_batches of the sample order: a run continued
  // from another's weights (train.init_from, `moe upcycle`) reads what its source did not.
  int64_t skip_batches = 0;

  bool operator==(const DataConfig&) const = default;
};

struct ParallelConfig {           // [parallel]
  int64_t tp = 1;                 // tensor-parallel group size (heads, FFN width and vocabulary split over it)
  bool sequence_parallel = false; // with tp > 1: norms and residuals on 1/tp of the tokens (Megatron's SP)
  int64_t pp = 1;                 // pipeline stages (each holds a contiguous run of layers)
  std::vector<int64_t> pp_layers; // layers per stage, pp entries summing to model.num_layers; [] = balanced
                                  // (as even as possible, the extra layers on the first stages)
  std::string pp_schedule = "1f1b";  // 1f1b | gpipe (all forwards, then all backwards)
  int64_t pp_virtual = 1;         // model chunks per stage: > 1 = interleaved 1F1B (Megatron's virtual stages)
  int64_t ep = 1;                 // expert-parallel group size, carved out of the data-parallel ranks
  int64_t zero = 0;               // ZeRO stage: 0 (plain DP), 1 (optimizer state), 2 (+gradients), 3 (+parameters)
  std::string order = "tp-dp-pp"; // rank order, fastest-varying dimension first
  double bucket_mb = 25.0;        // gradient-reduction bucket size
  bool overlap_grad_reduce = true;  // start each block's gradient reduction during the backward (ZeRO 0/1)
  bool a2a_overlap = false;       // run the shared experts while the expert all-to-alls are in flight (ep > 1)
  bool shared_expert_stream = true;  // one rank: the shared experts on a second CUDA stream beside the routed ones
  bool overlap_update = false;    // ZeRO-0 on a GPU: each block's AdamW update beside the next step's forward (measured: no gain)
  // with a2a_overlap: micro-batches in pairs, each one's attention while the other's all-to-all is in flight
  bool a2a_overlap_microbatches = false;

  bool operator==(const ParallelConfig&) const = default;
};

struct Config {
  ModelConfig model;
  ObjectiveConfig objective;
  MoeConfig moe;
  TrainConfig train;
  OptimConfig optim;
  ScheduleConfig schedule;
  DataConfig data;
  ParallelConfig parallel;
  std::string source_path;        // the file it was read from ("" when built in code)

  bool operator==(const Config&) const = default;  // source_path included
};

// Reads a TOML file, applies `section.key=value` overrides, validates. Errors name the key
// and, where it came from the file, the line: "config.toml:12: model.d_model: expected an integer".
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const std::string& toml_text, const std::string& source_name,
                    const std::vector<std::string>& overrides = {});
// Throws on impossible combinations (heads not dividing d_model, top_k > num_experts, ...).
void validate_config(const Config& config);
// The resolved config as TOML (every key, defaults included); parse_config(to_toml(c)) == c.
std::string to_toml(const Config& config);

// One key whose value differs between two configs, the values as TOML text ("4", "\"rope\"").
struct ConfigChange {
  std::string key;  // "train.steps"
  std::string before, after;
};
// Every key that differs, in declaration order (source_path is not a key).
std::vector<ConfigChange> config_changes(const Config& before, const Config& after);

}  // namespace moe
