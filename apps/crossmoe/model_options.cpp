#include "model_options.hpp"

#include <optional>

#include "model/init.hpp"
#include "option_checks.hpp"
#include "tokenizer/bpe_trainer.hpp"
#include "tokenizer/chatml.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

void add_model_shape_options(CLI::App& cmd, ModelShapeArgs& a) {
  cmd.add_option("--layout", a.layout, "dense, moe (layer-local), megrez2 (shared pool) or rexmoe (reuse)")
      ->capture_default_str()->check(CLI::IsMember({"dense", "moe", "megrez2", "rexmoe"}));
  // Sizes and counts: zero or less is an error (0 used to mean "the preset's value" silently).
  cmd.add_option("--vocab", a.vocab, "Vocabulary size")->check(positive());
  cmd.add_option("--hidden", a.hidden, "Hidden size")->check(positive());
  cmd.add_option("--layers", a.layers, "Number of layers")->check(positive());
  cmd.add_option("--heads", a.heads, "Attention heads")->check(positive());
  cmd.add_option("--kv-heads", a.kv_heads, "Key/value heads (GQA)")->check(positive());
  cmd.add_option("--head-dim", a.head_dim, "Head dimension")->check(positive());
  cmd.add_option("--intermediate", a.intermediate, "Dense FFN width")->check(positive());
  cmd.add_option("--context", a.context, "max_position_embeddings")->check(positive());
  cmd.add_option("--experts", a.experts, "Experts per pool (E)")->check(positive());
  cmd.add_option("--top-k", a.top_k, "Experts per token (K)")->check(positive());
  cmd.add_option("--expert-size", a.expert_size, "Width of one expert")->check(positive());
  cmd.add_option("--shared-size", a.shared_size, "Total width of the shared experts (0 = none)")->check(whole_number(0));
  cmd.add_option("--group-size", a.group_size, "Layers per cross-layer group (r)")->check(positive());
  cmd.add_option("--first-dense", a.first_dense, "Number of leading dense layers")->check(whole_number(0));
  cmd.add_option("--pre-gate", a.pre_gate, "Pre-gated routing: on or off")->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--scoring", a.scoring, "Router scoring: softmax, or sigmoid with correction bias")
      ->check(CLI::IsMember({"softmax", "sigmoid"}));
}

ModelConfig build_model_config(const ModelShapeArgs& a, const std::string& tokenizer_path) {
  ModelConfig c = layout_preset(a.layout);
  const auto set = [](int value, int& field) { if (value > 0) field = value; };
  set(a.vocab, c.vocab_size);
  set(a.hidden, c.hidden_size);
  set(a.heads, c.num_heads);
  set(a.kv_heads, c.num_kv_heads);
  set(a.head_dim, c.head_dim);
  set(a.intermediate, c.intermediate_size);
  set(a.context, c.max_position_embeddings);
  set(a.experts, c.moe.num_experts);
  set(a.top_k, c.moe.top_k);
  set(a.expert_size, c.moe.expert_intermediate_size);
  set(a.group_size, c.moe.group_size);
  if (a.shared_size >= 0) c.moe.shared_intermediate_size = a.shared_size;
  if (!a.pre_gate.empty()) c.moe.pre_gated = a.pre_gate == "on";
  if (!a.scoring.empty()) {
    c.moe.scoring = a.scoring == "sigmoid" ? Scoring::Sigmoid : Scoring::Softmax;
    c.moe.score_correction_bias = c.moe.scoring == Scoring::Sigmoid;
  }
  const bool moe = a.layout != "dense";
  if (a.layers > 0 || a.first_dense >= 0) {
    set(a.layers, c.num_layers);
    int first = 0;
    for (; first < int(c.layer_is_moe.size()) && !c.layer_is_moe[first]; ++first) {}
    if (a.first_dense >= 0) first = a.first_dense;
    c.layer_is_moe.assign(c.num_layers, false);
    if (moe)
      for (int l = first; l < c.num_layers; ++l) c.layer_is_moe[l] = true;
  }
  if (!tokenizer_path.empty()) {
    const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
    if (a.vocab == 0) c.vocab_size = (tokenizer.vocab_size() + 63) / 64 * 64;
    require(c.vocab_size >= tokenizer.vocab_size(), "--vocab " + std::to_string(c.vocab_size) +
                                                        " is smaller than the tokenizer's " +
                                                        std::to_string(tokenizer.vocab_size()));
    c.eos_token_ids.clear();
    for (const char* eos : {"<|endoftext|>", "<|im_end|>"})
      if (tokenizer.token_to_id(eos) >= 0) c.eos_token_ids.push_back(tokenizer.token_to_id(eos));
  }
  require(c.vocab_size >= 259, "--vocab must be at least 259 (256 bytes and 3 special tokens)");
  c.finalize();
  return c;
}

void write_tokenizer_files(const std::filesystem::path& dir, const std::string& tokenizer_path, int context) {
  namespace fs = std::filesystem;
  // Without a tokenizer: one token per byte (train one with `crossmoe tokenizer train`).
  if (tokenizer_path.empty()) {
    write_json_file(dir / "tokenizer.json", BpeTrainer::tokenizer_json({}, chatml_special_tokens()));
    write_json_file(dir / "tokenizer_config.json", chatml_tokenizer_config(context));
    return;
  }
  fs::copy_file(tokenizer_path, dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  // The chat template of the tokenizer's own tokenizer_config.json when one sits beside it
  // (`crossmoe tokenizer train` writes one), else ChatML when the tokenizer has its tokens.
  const fs::path beside = fs::path(tokenizer_path).parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(beside)) {
    nlohmann::json config = read_json_file(beside);
    if (config.is_object() && config.contains("chat_template")) {
      config["model_max_length"] = context;
      write_json_file(dir / "tokenizer_config.json", config);
      return;
    }
  }
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  bool chatml = true;
  for (const std::string& token : chatml_special_tokens()) chatml = chatml && tokenizer.token_to_id(token) >= 0;
  if (chatml) {
    write_json_file(dir / "tokenizer_config.json", chatml_tokenizer_config(context));
  } else {
    fs::remove(dir / "tokenizer_config.json");
    log_info(tokenizer_path + " has no chat template beside it and lacks the ChatML tokens: the model gets no chat "
             "template (chat and SFT need one)");
  }
}

}  // namespace crossmoe::cli
