#pragma once
// A model is a Hugging Face-style directory (config.json, safetensors, tokenizer.json,
// tokenizer_config.json / chat_template.jinja) or one GGUF file, whose metadata holds the same
// (model/gguf_model.hpp). Commands get a model's tokenizer and chat settings from here, so both
// kinds work everywhere.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tokenizer/tokenizer.hpp"

namespace crossmoe {

// The tokenizer.json of a directory, or the one a GGUF file's tokenizer.ggml.* keys describe;
// nullopt when the model has none (a GGUF with tokenizer.ggml.model "no_vocab").
std::optional<nlohmann::json> model_tokenizer_json(const std::filesystem::path& model);
std::optional<Tokenizer> load_model_tokenizer(const std::filesystem::path& model);
// Like load_model_tokenizer, but a model without a tokenizer is an Error saying `why` one is needed.
Tokenizer require_model_tokenizer(const std::filesystem::path& model, const std::string& why);
// tokenizer_config.json with chat_template.jinja applied, or a GGUF's tokenizer.chat_template and
// bos/eos tokens; nullopt when the model has none.
std::optional<nlohmann::json> model_tokenizer_config(const std::filesystem::path& model);
// The same where one is required: a directory's tokenizer_config.json must exist (its read error
// otherwise); a GGUF without chat keys gives an empty object (templates then say what is missing).
nlohmann::json read_model_tokenizer_config(const std::filesystem::path& model);

}  // namespace crossmoe
