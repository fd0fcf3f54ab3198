#pragma once
// The checkpoint's tensors bound to the model description: matrices stay in their stored dtype,
// in memory or in the file mapping (WeightResidency), or, under a memory budget, routed experts
// in the files until the expert cache reads them; the small vectors (norms, biases) are widened
// to f32 once.
#include <filesystem>
#include <memory>
#include <vector>

#include "kernels/kernels.hpp"
#include "model/checkpoint.hpp"
#include "model/config.hpp"

namespace crossmoe {

struct SwiGluWeights {
  kernels::Matrix gate, up, down;
  int width() const { return static_cast<int>(gate.rows); }
  size_t bytes() const;
};

struct LayerWeights {
  std::vector<float> input_norm, post_attention_norm;
  kernels::Matrix q, k, v, o;                 // latent attention: no k, v; q only without q_lora_rank
  std::vector<float> q_bias, k_bias, v_bias;  // empty without attention_bias
  std::vector<float> q_norm, k_norm;          // empty without q/k norm
  // Latent attention (LatentAttention): q_a [q_lora_rank, d] and q_b (when q_lora_rank > 0),
  // kv_a [kv_lora_rank + qk_rope_head_dim, d], kv_b [heads x (qk_nope + v), kv_lora_rank], and the
  // norms of the two latents; empty (rows == 0) otherwise.
  kernels::Matrix q_a, q_b, kv_a, kv_b;
  std::vector<float> q_a_norm, kv_a_norm;
  // kv_b per head, for attention over the latent cache: k_up[h] [kv_lora_rank, qk_nope] (head h's
  // k rows transposed: q_nope -> latent space) in latent_up's storage, and v_up[h]
  // [v_head_dim, kv_lora_rank] (head h's v rows: latent output -> v) in kv_b itself; both in
  // kv_b's dtype, or both widened to f32 in latent_up where kv_b is block-quantized.
  std::vector<kernels::Matrix> k_up, v_up;
  std::shared_ptr<const std::vector<std::byte>> latent_up;
  SwiGluWeights dense;                        // dense layers
  kernels::Matrix router;                     // MoE layers: [candidates, hidden]
  std::vector<float> router_bias;             // sigmoid routers with e_score_correction_bias
  std::vector<SwiGluWeights> experts;         // only in layers that own a pool
  SwiGluWeights shared;                       // rows == 0 when there are no shared experts
  // The attention's matrices this layer has (rows > 0).
  std::vector<const kernels::Matrix*> attention_matrices() const;
  std::vector<kernels::Matrix*> attention_matrices();
};

struct ModelWeights {
  kernels::Matrix embed, lm_head;
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;
  const SwiGluWeights& expert(const ExpertRef& ref) const { return layers[ref.owner_layer].experts[ref.index]; }
};

// Checks that every expected tensor is present with the right shape and a supported dtype.
ModelWeights bind_weights(const ModelConfig& config, const Checkpoint& checkpoint);

// A loaded model: description, mapped checkpoint and bound weights.
// Where the weights are read from: the file mapping (lazy, shares the page cache) or a copy in
// anonymous memory (read once at load; decode streams it faster). Auto copies when the
// weights take less than half of the memory available.
enum class WeightResidency { Auto, Mapped, InMemory };

class ExpertCache;
struct ExpertCacheOptions;

class Model {
 public:
  explicit Model(const std::filesystem::path& dir, WeightResidency residency = WeightResidency::Auto);
  // Under a memory budget: the routed experts stay in the files and are read into an expert
  // cache of the budget's size (runtime/expert_cache); everything else is read into memory.
  // Without a budget (options.budget not set), as Model(dir).
  Model(const std::filesystem::path& dir, const ExpertCacheOptions& options);
  ~Model();
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // The files' index. A model in memory holds its tensors in the kernels' layouts
  // (kernels::arrange_for_matmul), so their values are read from the files, not from here.
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const std::filesystem::path& dir() const { return dir_; }
  // Bytes one decoded token reads: its weights (weight_bytes_per_token) and the keys and values
  // of the `context` positions it attends to (kv_bytes_read), its own included: a token decoded
  // after a prompt of P tokens attends to P + 1.
  double bytes_per_token(double context = 0) const { return weight_bytes_per_token() + kv_bytes_read(context); }
  // Bytes of weights one decoded token reads: attention, the dense FFN or K experts plus router
  // and shared experts, the LM head, and one row of the embedding table. Vectors (norms,
  // biases) are left out: they are tiny and read from cache.
  double weight_bytes_per_token() const;
  // Bytes of the KV cache (f32 keys and values of every layer and kv head) that attention over
  // `context` positions reads: the query heads of a group read their kv head's block while it
  // is in cache, so each position's keys and values count once.
  double kv_bytes_read(double context) const;
  // The routed experts' cache under a memory budget; null when they are all in memory.
  ExpertCache* expert_cache() const { return expert_cache_.get(); }

 private:
  void load(WeightResidency residency);
  std::filesystem::path dir_;
  ModelConfig config_;
  Checkpoint checkpoint_;
  ModelWeights weights_;
  std::unique_ptr<ExpertCache> expert_cache_;
};

}  // namespace crossmoe
