#include "model/config.hpp"

#include <cmath>

#include <algorithm>

#include "util/error.hpp"

namespace crossmoe {

namespace {

void require_at_most(int64_t value, int64_t limit, const char* key) {
  require(value <= limit, std::string("config: '") + key + "' is " + std::to_string(value) + ", more than the " +
                              std::to_string(limit) + " crossmoe supports");
}

void require_positive(int value, const char* key) {
  require(value > 0, std::string("config: '") + key + "' must be positive, got " +
                         std::to_string(value));
}

// The attention's matrices and latent norms of one layer (biases and q/k norms aside).
int64_t attention_parameters(const ModelConfig& c) {
  const int64_t d = c.hidden_size, H = c.num_heads;
  if (!c.latent_attention) {
    const int64_t q_width = H * c.head_dim, kv_width = int64_t(c.num_kv_heads) * c.head_dim;
    return d * q_width + 2 * d * kv_width + q_width * d;
  }
  const LatentAttention& a = *c.latent_attention;
  const int64_t q_width = H * c.head_dim;
  const int64_t q = a.q_lora_rank > 0 ? d * a.q_lora_rank + a.q_lora_rank + int64_t(a.q_lora_rank) * q_width
                                      : d * q_width;
  const int64_t kv = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank +
                     int64_t(a.kv_lora_rank) * H * (a.qk_nope_head_dim + a.v_head_dim);
  return q + kv + H * a.v_head_dim * d;
}

}  // namespace

std::string to_string(CrossLayer mode) {
  switch (mode) {
    case CrossLayer::Local: return "local";
    case CrossLayer::SharedPool: return "shared_pool";
    case CrossLayer::Reuse: return "reuse";
  }
  return "?";
}

std::string to_string(Scoring scoring) { return scoring == Scoring::Softmax ? "softmax" : "sigmoid"; }

std::string to_string(RopeType type) {
  switch (type) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Dynamic: return "dynamic";
    case RopeType::Yarn: return "yarn";
    case RopeType::Llama3: return "llama3";
  }
  return "?";
}

std::string to_string(QkNorm norm) {
  switch (norm) {
    case QkNorm::None: return "none";
    case QkNorm::PerHead: return "per_head";
    case QkNorm::Full: return "full";
  }
  return "?";
}

std::vector<int> ModelConfig::group_layers(int group) const {
  std::vector<int> out;
  for (int l = 0; l < num_layers; ++l)
    if (layers[l].group == group) out.push_back(l);
  return out;
}

void ModelConfig::finalize() {
  require_positive(vocab_size, "vocab_size");
  require_positive(hidden_size, "hidden_size");
  require_positive(num_layers, "num_hidden_layers");
  require_positive(num_heads, "num_attention_heads");
  require_positive(num_kv_heads, "num_key_value_heads");
  require_positive(head_dim, "head_dim");
  if (latent_attention) {
    const LatentAttention& a = *latent_attention;
    require(a.q_lora_rank >= 0, "config: 'q_lora_rank' must not be negative");
    require_positive(a.kv_lora_rank, "kv_lora_rank");
    require(a.qk_nope_head_dim >= 0, "config: 'qk_nope_head_dim' must not be negative");
    require_positive(a.qk_rope_head_dim, "qk_rope_head_dim");
    require_positive(a.v_head_dim, "v_head_dim");
    require(a.latent_norm_eps > 0, "config: the latent norms' eps must be positive");
    require_at_most(std::max({a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.v_head_dim}), 1 << 16,
                    "q_lora_rank, kv_lora_rank, qk_nope_head_dim or v_head_dim");
    require_at_most(a.qk_rope_head_dim, 1 << 16, "qk_rope_head_dim");
    require(head_dim == a.qk_nope_head_dim + a.qk_rope_head_dim,
            "config: latent attention's key width must be 'qk_nope_head_dim' + 'qk_rope_head_dim'");
    require(num_kv_heads == num_heads, "config: latent attention needs 'num_key_value_heads' equal to "
                                       "'num_attention_heads' (each head expands its own key and value)");
    require(!attention_bias && qk_norm == QkNorm::None && !clip_qkv,
            "config: latent attention takes no attention bias, q/k norm or clip_qkv");
  }
  require(attention_scale_factor > 0 && std::isfinite(attention_scale_factor),
          "config: the attention scale factor must be positive");
  require(rope_dim() % 2 == 0, "config: the RoPE dimensions ('head_dim' or 'qk_rope_head_dim') must be even, got " +
                                   std::to_string(rope_dim()));
  require(num_heads % num_kv_heads == 0,
          "config: 'num_attention_heads' (" + std::to_string(num_heads) +
              ") must be a multiple of 'num_key_value_heads' (" + std::to_string(num_kv_heads) + ")");
  require(rms_norm_eps > 0, "config: 'rms_norm_eps' must be positive");
  require(rope.theta > 0, "config: 'rope_theta' must be positive");
  require(sliding_window >= 0, "config: 'sliding_window' must not be negative");
  if (rope.type != RopeType::Default)
    require(rope.factor > 0, "config: rope scaling 'factor' must be positive");
  if (rope.type == RopeType::Yarn || rope.type == RopeType::Llama3)
    require(rope.original_max_position_embeddings > 0,
            "config: rope scaling needs 'original_max_position_embeddings'");
  require(rope.freq_factors.empty() || int(rope.freq_factors.size()) == rope_dim() / 2,
          "config: RoPE frequency factors must number half the RoPE dimensions");
  for (float f : rope.freq_factors)
    require(std::isfinite(f) && f > 0, "config: RoPE frequency factors must be positive");
  // config.json is untrusted: limits far past any published model keep the layer plans below
  // and the parameter counts within bounded time and memory, and the counts within 64 bits.
  require_at_most(num_layers, 1 << 12, "num_hidden_layers");
  require_at_most(hidden_size, 1 << 18, "hidden_size");
  require_at_most(vocab_size, 1 << 24, "vocab_size");
  require_at_most(int64_t(num_heads) * head_dim, 1 << 20, "num_attention_heads x head_dim");
  require_at_most(int64_t(num_heads) * value_head_dim(), 1 << 20, "num_attention_heads x v_head_dim");
  require_at_most(intermediate_size, 1 << 24, "intermediate_size");
  if (layer_is_moe.empty()) layer_is_moe.assign(num_layers, false);
  require(static_cast<int>(layer_is_moe.size()) == num_layers,
          "config: MoE layer list does not match 'num_hidden_layers'");

  bool any_moe = false, any_dense = false;
  for (bool m : layer_is_moe) (m ? any_moe : any_dense) = true;
  if (any_dense) require_positive(intermediate_size, "intermediate_size");
  if (any_moe) {
    require_positive(moe.num_experts, "num_experts");
    require_positive(moe.top_k, "num_experts_per_tok");
    require_positive(moe.expert_intermediate_size, "moe_intermediate_size");
    require_positive(moe.group_size, "cross_layer_group_size");
    require(moe.shared_intermediate_size >= 0, "config: shared expert width must not be negative");
    require_at_most(moe.num_experts, 1 << 16, "num_experts");
    require_at_most(int64_t(moe.num_experts) * moe.expert_intermediate_size, 1 << 26,
                    "num_experts x moe_intermediate_size");
    require_at_most(moe.shared_intermediate_size, 1 << 24, "the shared experts' width");
    require(moe.group_size <= num_layers, "config: 'cross_layer_group_size' is " + std::to_string(moe.group_size) +
                                              ", more than the model's " + std::to_string(num_layers) +
                                              " layers ('num_hidden_layers')");
    if (moe.cross_layer == CrossLayer::Local)
      require(moe.group_size == 1, "config: a layer-local MoE has 'cross_layer_group_size' 1");
  }

  // Groups by layer index: MoE layer l belongs to group (l - start) / r. In a shared pool the
  // group's first layer, start + g*r, owns the experts (as Megrez2's published code loads them),
  // so that layer must be an MoE layer.
  layers.assign(num_layers, LayerPlan{});
  int start = moe.group_start_layer;
  if (start < 0)
    start = static_cast<int>(std::find(layer_is_moe.begin(), layer_is_moe.end(), true) - layer_is_moe.begin());
  int group = -1, previous_key = -1;
  for (int l = 0; l < num_layers; ++l) {
    if (!layer_is_moe[l]) continue;
    require(l >= start, "config: MoE layer " + std::to_string(l) + " comes before layer " +
                            std::to_string(start) + ", where the cross-layer groups start");
    const int key = (l - start) / moe.group_size;
    if (key != previous_key) ++group, previous_key = key;
    const int leader = start + key * moe.group_size;
    LayerPlan& plan = layers[l];
    plan.is_moe = true;
    plan.group = group;
    plan.owns_experts = moe.cross_layer != CrossLayer::SharedPool || l == leader;
    if (moe.cross_layer == CrossLayer::SharedPool)
      require(layer_is_moe[leader], "config: layer " + std::to_string(leader) + " leads the expert-sharing group of layer " +
                                        std::to_string(l) + " (layers " + std::to_string(leader) + ".." +
                                        std::to_string(leader + moe.group_size - 1) +
                                        ") and must own its experts, but it is not an MoE layer");
  }
  for (int l = 0; l < num_layers; ++l) {
    LayerPlan& plan = layers[l];
    if (!plan.is_moe) continue;
    std::vector<int> owners;
    if (moe.cross_layer == CrossLayer::Reuse) {
      owners = group_layers(plan.group);
    } else if (moe.cross_layer == CrossLayer::SharedPool) {
      owners = {group_layers(plan.group).front()};
    } else {
      owners = {l};
    }
    for (int owner : owners)
      for (int j = 0; j < moe.num_experts; ++j) plan.candidates.push_back({owner, j});
    const int n = static_cast<int>(plan.candidates.size());
    require(moe.top_k <= n, "config: 'num_experts_per_tok' (" + std::to_string(moe.top_k) +
                                ") exceeds the " + std::to_string(n) + " router candidates of layer " +
                                std::to_string(l));
    require(moe.n_group >= 1 && n % moe.n_group == 0,
            "config: 'n_group' (" + std::to_string(moe.n_group) + ") must divide the " +
                std::to_string(n) + " router candidates");
    require(moe.topk_group >= 1 && moe.topk_group <= moe.n_group,
            "config: 'topk_group' must be between 1 and 'n_group'");
    require(moe.n_group == 1 || moe.topk_group * (n / moe.n_group) >= moe.top_k,
            "config: 'topk_group' groups hold fewer than 'num_experts_per_tok' experts");
  }
}

ParamCounts count_parameters(const ModelConfig& c) {
  ParamCounts p;
  const int64_t d = c.hidden_size;
  const int64_t q_width = int64_t(c.num_heads) * c.head_dim;
  const int64_t kv_width = int64_t(c.num_kv_heads) * c.head_dim;
  const int64_t attention = attention_parameters(c);
  p.embedding = int64_t(c.vocab_size) * d;
  p.lm_head = c.tie_word_embeddings ? 0 : int64_t(c.vocab_size) * d;
  p.stored = p.active = p.embedding + p.lm_head + d;  // + final norm
  const int64_t swiglu_per_width = 3 * d;
  const int64_t expert = swiglu_per_width * c.moe.expert_intermediate_size;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerPlan& plan = c.layers[l];
    int64_t common = 2 * d + attention;
    if (c.attention_bias) common += q_width + 2 * kv_width;
    if (c.qk_norm == QkNorm::PerHead) common += 2 * c.head_dim;
    if (c.qk_norm == QkNorm::Full) common += q_width + kv_width;
    if (!plan.is_moe) {
      common += swiglu_per_width * c.intermediate_size;
    } else {
      const int64_t n = static_cast<int64_t>(plan.candidates.size());
      common += n * d + (c.moe.score_correction_bias ? n : 0);
      common += swiglu_per_width * c.moe.shared_intermediate_size;
      if (plan.owns_experts) p.stored += expert * c.moe.num_experts;
      p.active += expert * c.moe.top_k;
    }
    p.stored += common;
    p.active += common;
  }
  return p;
}

}  // namespace crossmoe
