// Decode with multi-head latent attention as the context grows, on a random-weight
// DeepSeek-V3-shaped model larger than the L3 cache: the real latent (kv_lora_rank 512 + a shared
// RoPE key of 64, per head k 128 + 64 and v 128, q latent), 16 heads of the real 128, hidden 1024,
// 4 layers (the first dense), 16 routed experts of 512 top-4 + 1 shared, vocabulary 4096: 120 M
// parameters, 241 MB of bf16, 64 M used per token; YaRN and the router as DeepSeek-V3's. The model
// is written into MODEL_DIR when that holds no config.json.
// For each context N: a fresh session prefills N random tokens, then times `gen` greedy decode
// steps. A decode step's work outside attention does not depend on the context, so attention's
// time per token is the step's time at N less its time at the shortest context given (the
// baseline, measured in the same run), printed beside its share of the step; wall time and the
// process's CPU time per token (less disturbed by other processes on a shared machine).
// Usage: bench_latent_decode MODEL_DIR [GEN [N...]]   (default 16 tokens at 16 256 1024 4096)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/safetensors.hpp"
#include "runtime/forward.hpp"

using namespace crossmoe;

namespace {

void write_model(const std::filesystem::path& dir) {
  const int d = 1024, H = 16, nope = 128, rope = 64, vd = 128, kvl = 512, ql = 384, L = 4, E = 16, mi = 512, V = 4096,
            dense = 2048;
  const nlohmann::json c = {
      {"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"}, {"hidden_size", d},
      {"num_attention_heads", H}, {"num_key_value_heads", H}, {"qk_nope_head_dim", nope}, {"qk_rope_head_dim", rope},
      {"qk_head_dim", nope + rope}, {"head_dim", rope}, {"v_head_dim", vd}, {"kv_lora_rank", kvl}, {"q_lora_rank", ql},
      {"num_hidden_layers", L}, {"first_k_dense_replace", 1}, {"intermediate_size", dense}, {"n_routed_experts", E},
      {"n_shared_experts", 1}, {"moe_intermediate_size", mi}, {"num_experts_per_tok", 4}, {"n_group", 4},
      {"topk_group", 2}, {"norm_topk_prob", true}, {"routed_scaling_factor", 2.5}, {"vocab_size", V},
      {"max_position_embeddings", 16384}, {"rms_norm_eps", 1e-6}, {"rope_interleave", true},
      {"tie_word_embeddings", false}, {"attention_bias", false}, {"bos_token_id", 1}, {"eos_token_id", 2},
      {"torch_dtype", "bfloat16"},
      {"rope_parameters",
       {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
        {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}}};
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << c.dump(2);
  std::vector<TensorToWrite> tensors;
  std::vector<std::vector<uint16_t>> data;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // bf16 of N(0, 1 / cols) for matrices, of 1 + N(0, 0.01) for norms and the router bias.
  const auto add = [&](const std::string& name, std::vector<int64_t> shape, bool vector = false) {
    const int64_t n = vector ? shape[0] : shape[0] * shape[1];
    std::vector<uint16_t> values(static_cast<size_t>(n));
    const float scale = 1.0f / std::sqrt(float(shape.back()));
    for (uint16_t& x : values) {
      const float f = vector ? 1.0f + 0.1f * normal(rng) : normal(rng) * scale;
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      x = uint16_t((bits + 0x8000u) >> 16);
    }
    data.push_back(std::move(values));
    tensors.push_back({name, DType::BF16, shape, nullptr});
  };
  add("model.embed_tokens.weight", {V, d});
  add("lm_head.weight", {V, d});
  add("model.norm.weight", {d}, true);
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {d}, true);
    add(p + "post_attention_layernorm.weight", {d}, true);
    add(p + "self_attn.q_a_proj.weight", {ql, d});
    add(p + "self_attn.q_a_layernorm.weight", {ql}, true);
    add(p + "self_attn.q_b_proj.weight", {H * (nope + rope), ql});
    add(p + "self_attn.kv_a_proj_with_mqa.weight", {kvl + rope, d});
    add(p + "self_attn.kv_a_layernorm.weight", {kvl}, true);
    add(p + "self_attn.kv_b_proj.weight", {H * (nope + vd), kvl});
    add(p + "self_attn.o_proj.weight", {d, H * vd});
    const auto swiglu = [&](const std::string& prefix, int width) {
      add(prefix + "gate_proj.weight", {width, d});
      add(prefix + "up_proj.weight", {width, d});
      add(prefix + "down_proj.weight", {d, width});
    };
    if (l == 0) {
      swiglu(p + "mlp.", dense);
      continue;
    }
    add(p + "mlp.gate.weight", {E, d});
    add(p + "mlp.gate.e_score_correction_bias", {E}, true);
    for (int e = 0; e < E; ++e) swiglu(p + "mlp.experts." + std::to_string(e) + ".", mi);
    swiglu(p + "mlp.shared_experts.", mi);
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = data[i].data();
  write_safetensors(dir / "model.safetensors", tensors);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_latent_decode MODEL_DIR [GEN [N...]]\n");
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    if (!std::filesystem::exists(dir / "config.json")) write_model(dir);
    const int gen = argc > 2 ? std::atoi(argv[2]) : 16;
    std::vector<int> contexts;
    for (int i = 3; i < argc; ++i) contexts.push_back(std::atoi(argv[i]));
    if (contexts.empty()) contexts = {16, 256, 1024, 4096};
    const Model model(dir);
    const ModelConfig& c = model.config();
    std::printf("model %s: %d layers, %d heads, latent %d + %d, KV cache %lld bytes per position\n", dir.c_str(),
                c.num_layers, c.num_heads, c.latent_attention ? c.latent_attention->kv_lora_rank : 0, c.rope_dim(),
                (long long)KvPool::bytes_per_position(c));
    std::printf("%8s %10s %10s %12s %16s %16s\n", "context", "ms/token", "tokens/s", "CPU ms/token",
                "attention ms", "attention CPU ms");
    double base_wall = 0, base_cpu = 0;
    for (size_t i = 0; i < contexts.size(); ++i) {
      const int n = contexts[i];
      std::mt19937 rng(1);
      std::vector<int> prompt(static_cast<size_t>(n));
      for (int& t : prompt) t = int(rng() % uint32_t(c.vocab_size));
      InferenceSession session(model, n + gen, 128);
      const std::vector<float>* logits = &session.forward(prompt);
      const auto wall0 = std::chrono::steady_clock::now();
      const std::clock_t cpu0 = std::clock();
      for (int g = 0; g < gen; ++g) {
        const int next = int(std::max_element(logits->begin(), logits->end()) - logits->begin());
        logits = &session.forward({next});
      }
      const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall0).count() / gen;
      const double cpu = double(std::clock() - cpu0) / CLOCKS_PER_SEC * 1e3 / gen;
      if (i == 0) base_wall = wall, base_cpu = cpu;
      std::printf("%8d %10.2f %10.1f %12.2f %9.2f (%3.0f%%) %9.2f (%3.0f%%)\n", n, wall, 1e3 / wall, cpu, wall - base_wall,
                  100 * (wall - base_wall) / wall, cpu - base_cpu, 100 * (cpu - base_cpu) / cpu);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
