#include "runtime/model_files.hpp"

#include "model/gguf_tokenizer.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

std::optional<nlohmann::json> model_tokenizer_json(const std::filesystem::path& model) {
  if (is_gguf_file(model)) return gguf_tokenizer_json(GgufFile(model));
  const auto path = model / "tokenizer.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  return read_json_file(path);
}

std::optional<Tokenizer> load_model_tokenizer(const std::filesystem::path& model) {
  if (!is_gguf_file(model)) {
    const auto path = model / "tokenizer.json";
    if (!std::filesystem::exists(path)) return std::nullopt;
    return Tokenizer::load(path);  // its errors name the file
  }
  const std::optional<nlohmann::json> json = model_tokenizer_json(model);
  if (!json) return std::nullopt;
  try {
    return Tokenizer(*json);
  } catch (const Error& e) {
    throw Error(model.string() + ": tokenizer metadata: " + e.what());
  }
}

Tokenizer require_model_tokenizer(const std::filesystem::path& model, const std::string& why) {
  std::optional<Tokenizer> t = load_model_tokenizer(model);
  require(t.has_value(), model.string() + " has no tokenizer.json (or, for a GGUF file, no tokenizer.ggml.* vocabulary); " + why);
  return std::move(*t);
}

std::optional<nlohmann::json> model_tokenizer_config(const std::filesystem::path& model) {
  if (is_gguf_file(model)) {
    nlohmann::json config = gguf_tokenizer_config(GgufFile(model));
    if (config.empty()) return std::nullopt;
    return config;
  }
  if (!std::filesystem::exists(model / "tokenizer_config.json")) return std::nullopt;
  return read_tokenizer_config(model);
}

nlohmann::json read_model_tokenizer_config(const std::filesystem::path& model) {
  if (is_gguf_file(model)) return gguf_tokenizer_config(GgufFile(model));
  return read_tokenizer_config(model);
}

}  // namespace crossmoe
