#pragma once
// config.json readers: each known Hugging Face model_type is mapped onto ModelConfig.
// Supported: llama, qwen3, qwen3_moe, olmoe, mixtral, megrez_moe (Megrez2), deepseek_v2 and
// deepseek_v3 (multi-head latent attention) and crossmoe's own
// type, which spells out every field of the description (ReXMoE reuse among them).
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/config.hpp"

namespace crossmoe {

ModelConfig parse_model_config(const nlohmann::json& config_json);
// config.json, plus the eos tokens of generation_config.json when it exists; or, for a GGUF file,
// its metadata (model/gguf_model.hpp).
ModelConfig read_model_config(const std::filesystem::path& model_dir);

// The crossmoe-type config.json for a description; parse_model_config reads it back exactly.
nlohmann::json to_crossmoe_json(const ModelConfig& config);

std::vector<std::string> supported_model_types();

}  // namespace crossmoe
