// crossmoe quantize MODEL OUT --type q8_0|q4_0|q5_0|q4_1|q5_1|iq4_nl|mxfp4|iq4_xs|q2_k|q3_k|q4_k|q5_k|q6_k|mixed: a model directory with block-quantized matrices.
#include <memory>

#include "commands.hpp"
#include "runtime/quantize.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct QuantizeArgs {
  std::string model, out, type;
};

void run_quantize(const QuantizeArgs& a) {
  QuantScheme scheme;
  parse_quant_scheme(a.type, &scheme);  // the option's check admits only the scheme names
  Stopwatch watch;
  const QuantizeSummary s = quantize_model(a.model, a.out, scheme);
  for (const auto& line : s.fallbacks) log_info("kept whole blocks: " + line);
  std::string counts;
  for (const auto& [dtype, n] : s.matrices_per_dtype) counts += (counts.empty() ? "" : ", ") + std::to_string(n) + " " + dtype;
  log_info("wrote " + a.out + " (" + a.type + "): matrices " + counts + " in " +
           std::to_string(watch.seconds()).substr(0, 5) + " s");
}

}  // namespace

void add_quantize(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Write a copy of a model with block-quantized matrices (Q8_0: 8.5 bits a weight, Q6_K: 6.56, Q5_1: 6, Q5_0: 5.5, Q5_K: 5.5, Q4_1: 5, Q4_0: 4.5, IQ4_NL: 4.5, MXFP4: 4.25, Q4_K: 4.5, IQ4_XS: 4.25, Q3_K: 3.44, Q2_K: 2.63) that every "
      "command loads as it is stored; norms and biases keep their dtype");
  cmd->add_option("model", a->model, "Model directory or GGUF file (F32, BF16 or F16 weights)")->required()->check(CLI::ExistingPath);
  cmd->add_option("out", a->out, "New model directory to write (must not exist)")->required();
  cmd->add_option("--type", a->type,
                  "q8_0, q4_0, q5_0, q4_1, q5_1, iq4_nl, mxfp4, iq4_xs, q2_k, q3_k, q4_k, q5_k or q6_k: every matrix; mixed: routed experts q4_k, the rest (attention, routers, shared "
                  "experts, dense FFNs, embeddings, LM head) q8_0. A matrix whose columns are not whole blocks "
                  "falls back to q8_0 (or keeps its dtype)")
      ->required()
      ->check(CLI::IsMember({"q8_0", "q4_0", "q5_0", "q4_1", "q5_1", "iq4_nl", "mxfp4", "iq4_xs", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "mixed"}));
  add_threads_option(*cmd);
  cmd->callback([a] { run_quantize(*a); });
}

}  // namespace crossmoe::cli
