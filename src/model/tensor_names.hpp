#pragma once
// The tensor-name table: where each weight of the description lives in a Hugging Face
// checkpoint. The loader and the checkpoint writer both go through it, so names are spelled once.
#include <set>
#include <string>
#include <vector>

#include "model/config.hpp"

namespace crossmoe {

enum class Proj { Gate, Up, Down };  // SwiGLU projections: down(silu(gate(u)) * up(u))
// Multi-head latent attention's own tensors (LatentAttention): the q low-rank projection and its
// norm, the kv latent projection (with the shared RoPE key), its norm, and the per-head expansion.
enum class LatentPart { QA, QANorm, QB, KvA, KvANorm, KvB };

namespace tensor_names {
std::string embed();
std::string lm_head();
std::string final_norm();
std::string input_norm(int layer);
std::string post_attention_norm(int layer);
std::string attn(int layer, char which);            // which: 'q', 'k', 'v', 'o'
std::string latent_attn(int layer, LatentPart part);
std::string attn_bias(int layer, char which);       // 'q', 'k', 'v'
std::string qk_norm(int layer, char which);         // 'q', 'k'
std::string dense_mlp(int layer, Proj proj);
std::string router(const ModelConfig& c, int layer);
std::string router_bias(const ModelConfig& c, int layer);
std::string expert(const ModelConfig& c, int layer, int expert, Proj proj);
std::string shared_expert(int layer, Proj proj);
}  // namespace tensor_names

// The names of the routed experts' tensors (gate, up and down of each expert of each owning
// layer): those left out of memory under a budget, those `quantize --type mixed` makes Q4_K.
std::set<std::string> routed_expert_tensors(const ModelConfig& config);

enum class TensorRole { Norm, Weight, Bias };

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role;
};

// Every tensor a checkpoint of this description holds, with its shape.
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);

}  // namespace crossmoe
