#include "model/init.hpp"

#include <cmath>

#include "model/hf_config.hpp"
#include "model/safetensors.hpp"
#include "model/tensor_names.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

namespace {

// Counter-based random numbers: element i of tensor t is a pure function of (seed, t, i), so
// tensors fill in parallel and the same seed always gives the same model.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline float uniform_pm1(uint64_t seed, uint64_t tensor, uint64_t i) {  // in [-1, 1)
  const uint64_t r = mix(seed ^ mix(tensor * 0x100000001b3ull + i));
  return float(double(r >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

void store(float v, DType dtype, std::byte* out, int64_t i) {
  switch (dtype) {
    case DType::F32: reinterpret_cast<float*>(out)[i] = v; break;
    case DType::BF16: reinterpret_cast<uint16_t*>(out)[i] = f32_to_bf16(v); break;
    case DType::F16: reinterpret_cast<uint16_t*>(out)[i] = f32_to_f16(v); break;
    default: throw Error("init: unsupported dtype " + dtype_name(dtype));
  }
}

}  // namespace

std::vector<std::string> layout_names() { return {"dense", "moe", "megrez2", "rexmoe"}; }

ModelConfig layout_preset(const std::string& layout) {
  ModelConfig c;
  c.model_type = "crossmoe";
  c.vocab_size = 512;
  c.hidden_size = 256;
  c.num_layers = 6;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 32;
  c.intermediate_size = 768;
  c.max_position_embeddings = 4096;
  c.rope.theta = 10000.0;
  c.qk_norm = QkNorm::PerHead;
  c.bos_token_id = -1;
  c.eos_token_ids = {256};
  c.moe.num_experts = 8;
  c.moe.top_k = 2;
  c.moe.expert_intermediate_size = 128;
  c.layer_is_moe.assign(c.num_layers, true);
  if (layout == "dense") {
    c.layer_is_moe.assign(c.num_layers, false);
    c.moe = MoeConfig{};
  } else if (layout == "moe") {
    c.moe.norm_topk_prob = true;
  } else if (layout == "megrez2") {
    c.layer_is_moe[0] = false;  // first layer dense, as in Megrez2
    c.moe.cross_layer = CrossLayer::SharedPool;
    c.moe.group_size = 3;
    c.moe.num_experts = 16;
    c.moe.top_k = 4;
    c.moe.shared_intermediate_size = 128;
    c.moe.scoring = Scoring::Sigmoid;
    c.moe.score_correction_bias = true;
    c.moe.norm_topk_prob = true;
    c.moe.routed_scaling_factor = 1.0;
    c.moe.pre_gated = true;
  } else if (layout == "rexmoe") {
    c.moe.cross_layer = CrossLayer::Reuse;
    c.moe.group_size = 2;
    c.moe.norm_topk_prob = true;
  } else {
    std::string names;
    for (const auto& n : layout_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error("unknown layout '" + layout + "' (choose one of: " + names + ")");
  }
  return c;
}

void write_random_model(const ModelConfig& config, const std::filesystem::path& dir, const InitOptions& options) {
  require(options.dtype == DType::F32 || options.dtype == DType::BF16 || options.dtype == DType::F16,
          "init: dtype must be f32, bf16 or f16");
  std::filesystem::create_directories(dir);
  const std::vector<TensorSpec> specs = expected_tensors(config);
  std::vector<TensorToWrite> tensors;
  for (const auto& s : specs) tensors.push_back({s.name, options.dtype, s.shape, nullptr});
  write_safetensors(
      dir / "model.safetensors", tensors,
      [&](size_t t, std::byte* out) {
        const TensorSpec& s = specs[t];
        int64_t n = 1;
        for (int64_t d : s.shape) n *= d;
        // Uniform with variance 1/fan_in keeps activations of order one through the layers.
        const float scale = s.role == TensorRole::Weight ? std::sqrt(3.0f / float(s.shape.back()))
                            : s.role == TensorRole::Bias ? 0.05f
                                                         : options.norm_noise;
        const float offset = s.role == TensorRole::Norm ? 1.0f : 0.0f;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; ++i) store(offset + scale * uniform_pm1(options.seed, t, uint64_t(i)), options.dtype, out, i);
      },
      {{"format", "pt"}});
  write_config_files(config, dir, options.dtype);
}

void write_config_files(const ModelConfig& config, const std::filesystem::path& dir, DType dtype) {
  nlohmann::json cfg = to_crossmoe_json(config);
  cfg["torch_dtype"] = dtype == DType::F32 ? "float32" : dtype == DType::F16 ? "float16" : "bfloat16";
  write_json_file(dir / "config.json", cfg);
  nlohmann::json gen = {{"do_sample", false}};
  if (!config.eos_token_ids.empty()) gen["eos_token_id"] = config.eos_token_ids;
  write_json_file(dir / "generation_config.json", gen);
}

}  // namespace crossmoe
