#pragma once
// Model-shape flags shared by `init` and `train`: a layout preset with fields overridden, and the
// tokenizer files every model directory ships with.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>

#include "model/config.hpp"

namespace crossmoe::cli {

struct ModelShapeArgs {
  std::string layout = "megrez2";
  int vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  int experts = 0, top_k = 0, expert_size = 0, shared_size = -1, group_size = 0, first_dense = -1, context = 0;
  std::string pre_gate, scoring;
  bool operator==(const ModelShapeArgs&) const = default;
};

void add_model_shape_options(CLI::App& cmd, ModelShapeArgs& args);

// The preset with the flags applied; with a tokenizer, the vocabulary covers it (rounded up to 64
// unless --vocab is given) and its end-of-text tokens become the eos tokens. Finalized.
ModelConfig build_model_config(const ModelShapeArgs& args, const std::string& tokenizer_path);

// tokenizer.json (a copy of tokenizer_path, or one token per byte when empty) and its
// tokenizer_config.json: the one beside tokenizer_path when it has a chat template, else ChatML
// (tokenizer/chatml.hpp) when the tokenizer has the ChatML tokens, else none (with a note).
void write_tokenizer_files(const std::filesystem::path& dir, const std::string& tokenizer_path, int context);

}  // namespace crossmoe::cli
