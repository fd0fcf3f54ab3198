// crossmoe convert MODEL OUT.gguf: a model as a GGUF file for llama.cpp.
#include <memory>
#include <optional>

#include "commands.hpp"
#include "runtime/gguf_export.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct ConvertArgs {
  std::string model, out, type = "keep";
};

void run_convert(const ConvertArgs& a) {
  Stopwatch watch;
  std::optional<DType> type;
  if (a.type != "keep") {
    type.emplace();
    parse_dtype(a.type == "f32" ? "F32" : a.type == "f16" ? "F16" : "BF16", &*type);
  }
  const GgufExportSummary s = export_gguf(a.model, a.out, type);
  log_info("wrote " + a.out + ": architecture " + s.architecture + ", " + std::to_string(s.tensors) + " tensors, " +
           (s.tokenizer ? "with the tokenizer" : "no tokenizer (tokenizer.ggml.model no_vocab: run it with token ids)") +
           ", in " + std::to_string(watch.seconds()).substr(0, 5) + " s");
}

}  // namespace

void add_convert(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Write a model as a GGUF file that llama.cpp loads: architecture llama (dense, or Mixtral-style MoE), qwen3, "
      "qwen3moe, olmoe or deepseek2 (DeepSeek-V2 / V3 latent attention); matrices keep their type (F32, F16, BF16, "
      "Q8_0, Q4_K, ... IQ2_XXS, TQ2_0: every block type); the tokenizer goes along when the model has one (byte-level BPE with a "
      "pre-tokenizer llama.cpp names, or SentencePiece-style BPE with byte fallback as LLaMA-2 / Mistral's)");
  cmd->add_option("model", a->model, "Model directory or GGUF file")->required()->check(CLI::ExistingPath);
  cmd->add_option("out", a->out, "GGUF file to write (replaced if it exists)")->required();
  cmd->add_option("--type", a->type,
                  "keep: every matrix as stored; f32, f16 or bf16: element-wise matrices converted to that type "
                  "(block-quantized matrices stay as they are)")
      ->capture_default_str()
      ->check(CLI::IsMember({"keep", "f32", "f16", "bf16"}));
  cmd->callback([a] { run_convert(*a); });
}

}  // namespace crossmoe::cli
