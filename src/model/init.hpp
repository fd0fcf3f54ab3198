#pragma once
// Random-initialised model directories in the exact format of a real checkpoint (config.json,
// generation_config.json, model.safetensors with Hugging Face tensor names), so that every
// model crossmoe makes is read back through the real loader.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "util/dtype.hpp"

namespace crossmoe {

// A small model of a named layout: "dense", "moe" (layer-local), "megrez2" (shared pool,
// pre-gated, sigmoid router with bias, shared expert) or "rexmoe" (cross-layer reuse).
// Callers adjust fields and call finalize().
ModelConfig layout_preset(const std::string& layout);
std::vector<std::string> layout_names();

struct InitOptions {
  uint64_t seed = 0;
  DType dtype = DType::BF16;
  // Norm weights are 1 in a real init; tests ask for noise so that a missed norm shows.
  float norm_noise = 0.0f;
};

// Writes the model files into dir (created if needed). Deterministic for a seed.
void write_random_model(const ModelConfig& config, const std::filesystem::path& dir, const InitOptions& options);

// config.json (crossmoe type, torch_dtype from dtype) and generation_config.json (greedy, eos).
void write_config_files(const ModelConfig& config, const std::filesystem::path& dir, DType dtype);

}  // namespace crossmoe
