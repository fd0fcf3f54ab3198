#pragma once
// The one model description every layout maps onto.
//
// A model is a pre-norm decoder:  h = x + Attn(RMSNorm(x));  y = h + FFN_l(RMSNorm(h)).
// FFN_l is a dense SwiGLU or a mixture of experts. All MoE layouts are one mechanism:
// consecutive MoE layers form groups of r; each group has expert pools owned by some of
// its layers; a layer's router scores the concatenation of the group's pools in layer order.
//   layer-local  r = 1                        candidates = own E experts
//   shared pool  (Megrez2) leader owns E      candidates = the leader's E experts
//   reuse        (ReXMoE) every layer owns E  candidates = r*E experts of the group
// Attention is multi-head (grouped-query) attention over per-head q, k, v projections, or
// multi-head latent attention (LatentAttention below).
// Readers of real config.json files (hf_config.hpp) fill this struct and call finalize().
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace crossmoe {

enum class RopeType { Default, Linear, Dynamic, Yarn, Llama3 };

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;
  int original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;    // llama3
  double high_freq_factor = 4.0;   // llama3
  double beta_fast = 32.0;         // yarn
  double beta_slow = 1.0;          // yarn
  double attention_factor = 0.0;   // yarn; 0 means 0.1*ln(factor)+1
  bool truncate = true;            // yarn: round the correction range to whole dims
  // Per-frequency divisors applied after the type's own scaling (GGUF's rope_freqs tensor, in which
  // llama.cpp's converter stores LLaMA-3 scaling); empty = none.
  std::vector<float> freq_factors;
};

enum class QkNorm { None, PerHead, Full };   // Qwen3 normalises each head; OLMoE the whole projection
enum class Scoring { Softmax, Sigmoid };
enum class CrossLayer { Local, SharedPool, Reuse };
enum class TensorNaming { HuggingFace, Mixtral };  // Mixtral: block_sparse_moe.experts.j.w1/w2/w3

struct MoeConfig {
  int num_experts = 0;               // E, experts in one pool
  int top_k = 0;                     // K
  int expert_intermediate_size = 0;  // width of one routed expert
  int shared_intermediate_size = 0;  // total width of the shared experts; 0 = none
  Scoring scoring = Scoring::Softmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  bool score_correction_bias = false;  // sigmoid routers with e_score_correction_bias
  int n_group = 1;                     // grouped top-k: pick topk_group of n_group groups first
  int topk_group = 1;
  CrossLayer cross_layer = CrossLayer::Local;
  int group_size = 1;                  // r
  // Layer index where cross-layer group 0 starts: MoE layer l is in group (l - start) / r, by
  // layer index, not by position among MoE layers (Megrez2: first_k_dense_replace). -1: the
  // first MoE layer.
  int group_start_layer = -1;
  bool pre_gated = false;              // router of layer l reads the FFN input of layer l-1
};

// Multi-head latent attention (DeepSeek-V2/V3, transformers' DeepseekV3Attention). Per token:
//   q = x Wq, or RMSNorm(x Wq_a) Wq_b when q_lora_rank > 0     -> per head [q_nope | q_rope]
//   [c | k_rope] = x Wkv_a; c = RMSNorm(c)                     (c: kv_lora_rank floats)
//   c Wkv_b -> per head [k_nope | v]; each head's key is [k_nope | k_rope], one k_rope for all heads
// q_rope and k_rope are rotated (RoPE over qk_rope_head_dim dims, in interleaved pairs
// (2i, 2i+1) when rope_interleave); scores are q . k over qk_nope + qk_rope dims; o takes
// heads x v_head_dim. ModelConfig::head_dim is the key width qk_nope + qk_rope and there are as
// many kv heads as heads. The KV cache holds only [c | k_rope] per position (one head shared by
// all): q_nope . k_nope = (Wk_up^T q_nope) . c, so each query head takes k's expansion into the
// latent space, attends over [c | k_rope] with c as the value, and expands its output by v's.
struct LatentAttention {
  int q_lora_rank = 0;        // 0: one q projection
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  bool rope_interleave = true;
  // The two latent norms are built with RMSNorm's default eps, not rms_norm_eps (as transformers
  // and DeepSeek's code build them).
  double latent_norm_eps = 1e-6;
};

struct ExpertRef {
  int owner_layer = 0;  // layer whose tensors hold the expert
  int index = 0;        // expert number inside that layer's pool
  bool operator==(const ExpertRef&) const = default;
};

struct LayerPlan {
  bool is_moe = false;
  int group = -1;                     // cross-layer group, numbered 0, 1, ... in layer order; -1 for dense layers
  bool owns_experts = false;
  std::vector<ExpertRef> candidates;  // one per router output, in router order
};

struct ModelConfig {
  std::string model_type;
  TensorNaming naming = TensorNaming::HuggingFace;
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;         // dense FFN width
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  std::optional<double> clip_qkv;    // OLMoE: clamp q, k, v after projection
  int sliding_window = 0;            // 0 = full attention
  QkNorm qk_norm = QkNorm::None;
  std::optional<LatentAttention> latent_attention;
  // The softmax scale is attention_scale_factor / sqrt(head_dim) (DeepSeek's YaRN: mscale^2).
  double attention_scale_factor = 1.0;
  RopeConfig rope;                   // over rope_dim() dims of each head: its last ones
  std::vector<bool> layer_is_moe;    // one per layer
  MoeConfig moe;
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  // Filled by finalize(): which experts each layer may route to and who owns them.
  std::vector<LayerPlan> layers;

  // Checks consistency (naming the offending key) and computes `layers`.
  void finalize();
  // Width of one head's value (and of its share of the attention output).
  int value_head_dim() const { return latent_attention ? latent_attention->v_head_dim : head_dim; }
  // Dimensions RoPE rotates: the last rope_dim() of each query and key head.
  int rope_dim() const { return latent_attention ? latent_attention->qk_rope_head_dim : head_dim; }
  // What attention reads from the KV cache per position and layer: heads, each with a key and a
  // value of these widths (latent attention: one head, key [c | k_rope], value c).
  int cache_heads() const { return latent_attention ? 1 : num_kv_heads; }
  int cache_key_dim() const {
    return latent_attention ? latent_attention->kv_lora_rank + latent_attention->qk_rope_head_dim : head_dim;
  }
  int cache_value_dim() const { return latent_attention ? latent_attention->kv_lora_rank : head_dim; }
  // Whether a position's value is the first cache_value_dim() floats of its key, stored once, with
  // the key (latent attention's c), rather than apart.
  bool cache_values_in_keys() const { return latent_attention.has_value(); }
  int num_candidates(int layer) const { return static_cast<int>(layers[layer].candidates.size()); }
  // Layers of the cross-layer group `group`, in order.
  std::vector<int> group_layers(int group) const;
};

struct ParamCounts {
  int64_t stored = 0;            // every parameter in the checkpoint
  int64_t active = 0;            // parameters one token uses (K routed experts per MoE layer)
  int64_t embedding = 0;         // input embedding table
  int64_t lm_head = 0;           // output projection (0 when tied)
  int64_t active_non_embedding() const { return active - embedding - lm_head; }
  int64_t stored_non_embedding() const { return stored - embedding - lm_head; }
};

ParamCounts count_parameters(const ModelConfig& config);

std::string to_string(CrossLayer mode);
std::string to_string(Scoring scoring);
std::string to_string(RopeType type);
std::string to_string(QkNorm norm);

}  // namespace crossmoe
