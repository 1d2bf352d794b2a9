// `moe convert --from-hf DIR --out RUN_DIR` and `moe convert --to-hf RUN_OR_CHECKPOINT --out DIR`:
// Hugging Face interoperability (src/tools/hf_import.h, hf_export.h; docs/interop.md).
#include <memory>

#include "parallel/mpi_env.h"
#include "src/cli/commands.h"
#include "src/tools/hf_export.h"
#include "src/tools/hf_import.h"
#include "src/util/log.h"

namespace moe {

namespace {

struct ConvertOptions {
  std::string from_hf, to_hf, out, arch, dtype;
  std::vector<std::string> overrides;
  int64_t seq_len = 0;
};

int run_convert(const ConvertOptions& o) {
  MOE_CHECK(o.from_hf.empty() != o.to_hf.empty(), "convert needs exactly one of --from-hf DIR and --to-hf RUN_DIR");
  if (!o.from_hf.empty()) {
    MOE_CHECK(o.arch.empty() && o.dtype.empty(), "--arch and --dtype apply to --to-hf only");
    const HfImportResult r = import_hf(o.from_hf, o.out, o.seq_len, o.overrides);
    const Config& c = r.model.spec.config;
    log::info("convert: {} ({}, {}) -> {}: {} parameters, {} layers{}", o.from_hf, hf_family_name(r.model.spec.family),
              hf_dtype_torch_name(r.model.dtype), r.checkpoint_dir, r.model.weights.size(), c.model.num_layers,
              c.moe.num_experts > 0 ? fmt::format(", {} experts", c.moe.num_experts) : "");
    log::info("evaluate with: moe eval {}/config.toml; train with: moe train {}/config.toml", o.out, o.out);
    return 0;
  }
  MOE_CHECK(o.seq_len == 0 && o.overrides.empty(), "--seq-len and --set apply to --from-hf only");
  const HfExportResult r = export_hf(o.to_hf, o.out, HfExportOptions{o.arch, o.dtype});
  log::info("convert: {} -> {} ({}, {}): {} tensors", r.checkpoint_dir, o.out, hf_family_name(r.family),
            hf_dtype_torch_name(r.dtype), r.num_tensors);
  return 0;
}

}  // namespace

void add_convert_command(CLI::App& app, CommandRunner& run) {
  auto* cmd = app.add_subcommand("convert", "import a Hugging Face checkpoint, or export a run to one");
  auto o = std::make_shared<ConvertOptions>();
  cmd->add_option("--from-hf", o->from_hf, "Hugging Face directory (config.json + safetensors) to import");
  cmd->add_option("--to-hf", o->to_hf, "run directory (its latest checkpoint) or checkpoint directory to export");
  cmd->add_option("--out", o->out, "run directory (import) or Hugging Face directory (export) to write")->required();
  cmd->add_option("--seq-len", o->seq_len, "import: model.seq_len (default min(max_position_embeddings, 4096))");
  cmd->add_option("--set", o->overrides, "import: a key of the written config.toml, section.key=value (data, train, "
                  "optim, ...; repeatable)");
  cmd->add_option("--arch", o->arch, "export: llama | mistral | qwen2 | mixtral | qwen2_moe (default: as imported)");
  cmd->add_option("--dtype", o->dtype, "export: float32 | bfloat16 | float16 (default: as imported, else float32)");
  cmd->callback([&run, o] {
    run = [o](MpiEnv& env) { return env.world_rank() == 0 ? run_convert(*o) : 0; };
  });
}

}  // namespace moe
