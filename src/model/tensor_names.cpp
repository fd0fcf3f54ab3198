#include "model/tensor_names.hpp"

namespace crossmoe {

namespace tensor_names {

namespace {
std::string layer_prefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }
const char* proj_name(Proj p) { return p == Proj::Gate ? "gate_proj" : p == Proj::Up ? "up_proj" : "down_proj"; }
// Mixtral's w1 / w3 / w2 are gate / up / down.
const char* mixtral_name(Proj p) { return p == Proj::Gate ? "w1" : p == Proj::Up ? "w3" : "w2"; }
std::string moe_block(const ModelConfig& c, int layer) {
  return layer_prefix(layer) + (c.naming == TensorNaming::Mixtral ? "block_sparse_moe." : "mlp.");
}
}  // namespace

std::string embed() { return "model.embed_tokens.weight"; }
std::string lm_head() { return "lm_head.weight"; }
std::string final_norm() { return "model.norm.weight"; }
std::string input_norm(int l) { return layer_prefix(l) + "input_layernorm.weight"; }
std::string post_attention_norm(int l) { return layer_prefix(l) + "post_attention_layernorm.weight"; }
std::string attn(int l, char which) { return layer_prefix(l) + "self_attn." + which + "_proj.weight"; }
std::string latent_attn(int l, LatentPart part) {
  const char* name = "";
  switch (part) {
    case LatentPart::QA: name = "q_a_proj.weight"; break;
    case LatentPart::QANorm: name = "q_a_layernorm.weight"; break;
    case LatentPart::QB: name = "q_b_proj.weight"; break;
    case LatentPart::KvA: name = "kv_a_proj_with_mqa.weight"; break;
    case LatentPart::KvANorm: name = "kv_a_layernorm.weight"; break;
    case LatentPart::KvB: name = "kv_b_proj.weight"; break;
  }
  return layer_prefix(l) + "self_attn." + name;
}
std::string attn_bias(int l, char which) { return layer_prefix(l) + "self_attn." + which + "_proj.bias"; }
std::string qk_norm(int l, char which) { return layer_prefix(l) + "self_attn." + which + "_norm.weight"; }
std::string dense_mlp(int l, Proj p) { return layer_prefix(l) + "mlp." + proj_name(p) + ".weight"; }
std::string router(const ModelConfig& c, int l) { return moe_block(c, l) + "gate.weight"; }
std::string router_bias(const ModelConfig& c, int l) { return moe_block(c, l) + "gate.e_score_correction_bias"; }
std::string expert(const ModelConfig& c, int l, int j, Proj p) {
  return moe_block(c, l) + "experts." + std::to_string(j) + "." +
         (c.naming == TensorNaming::Mixtral ? mixtral_name(p) : proj_name(p)) + ".weight";
}
std::string shared_expert(int l, Proj p) { return layer_prefix(l) + "mlp.shared_experts." + proj_name(p) + ".weight"; }

}  // namespace tensor_names

std::set<std::string> routed_expert_tensors(const ModelConfig& c) {
  std::set<std::string> names;
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layers[l].owns_experts)
      for (int j = 0; j < c.moe.num_experts; ++j)
        for (Proj p : {Proj::Gate, Proj::Up, Proj::Down}) names.insert(tensor_names::expert(c, l, j, p));
  return names;
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  namespace n = tensor_names;
  using R = TensorRole;
  const int64_t d = c.hidden_size, V = c.vocab_size;
  const int64_t qw = int64_t(c.num_heads) * c.head_dim, kvw = int64_t(c.num_kv_heads) * c.head_dim;
  std::vector<TensorSpec> out;
  out.push_back({n::embed(), {V, d}, R::Weight});
  const auto swiglu = [&](auto name_of, int64_t width) {
    out.push_back({name_of(Proj::Gate), {width, d}, R::Weight});
    out.push_back({name_of(Proj::Up), {width, d}, R::Weight});
    out.push_back({name_of(Proj::Down), {d, width}, R::Weight});
  };
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerPlan& plan = c.layers[l];
    out.push_back({n::input_norm(l), {d}, R::Norm});
    if (c.latent_attention) {
      const LatentAttention& a = *c.latent_attention;
      const int64_t H = c.num_heads;
      if (a.q_lora_rank > 0) {
        out.push_back({n::latent_attn(l, LatentPart::QA), {a.q_lora_rank, d}, R::Weight});
        out.push_back({n::latent_attn(l, LatentPart::QANorm), {a.q_lora_rank}, R::Norm});
        out.push_back({n::latent_attn(l, LatentPart::QB), {qw, a.q_lora_rank}, R::Weight});
      } else {
        out.push_back({n::attn(l, 'q'), {qw, d}, R::Weight});
      }
      out.push_back({n::latent_attn(l, LatentPart::KvA), {a.kv_lora_rank + a.qk_rope_head_dim, d}, R::Weight});
      out.push_back({n::latent_attn(l, LatentPart::KvANorm), {a.kv_lora_rank}, R::Norm});
      out.push_back({n::latent_attn(l, LatentPart::KvB), {H * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank},
                     R::Weight});
      out.push_back({n::attn(l, 'o'), {d, H * a.v_head_dim}, R::Weight});
    } else {
      out.push_back({n::attn(l, 'q'), {qw, d}, R::Weight});
      out.push_back({n::attn(l, 'k'), {kvw, d}, R::Weight});
      out.push_back({n::attn(l, 'v'), {kvw, d}, R::Weight});
      out.push_back({n::attn(l, 'o'), {d, qw}, R::Weight});
    }
    if (c.attention_bias) {
      out.push_back({n::attn_bias(l, 'q'), {qw}, R::Bias});
      out.push_back({n::attn_bias(l, 'k'), {kvw}, R::Bias});
      out.push_back({n::attn_bias(l, 'v'), {kvw}, R::Bias});
    }
    if (c.qk_norm != QkNorm::None) {
      const bool full = c.qk_norm == QkNorm::Full;
      out.push_back({n::qk_norm(l, 'q'), {full ? qw : c.head_dim}, R::Norm});
      out.push_back({n::qk_norm(l, 'k'), {full ? kvw : c.head_dim}, R::Norm});
    }
    out.push_back({n::post_attention_norm(l), {d}, R::Norm});
    if (!plan.is_moe) {
      swiglu([&](Proj p) { return n::dense_mlp(l, p); }, c.intermediate_size);
      continue;
    }
    const int64_t cand = static_cast<int64_t>(plan.candidates.size());
    out.push_back({n::router(c, l), {cand, d}, R::Weight});
    if (c.moe.score_correction_bias) out.push_back({n::router_bias(c, l), {cand}, R::Bias});
    if (plan.owns_experts)
      for (int j = 0; j < c.moe.num_experts; ++j)
        swiglu([&](Proj p) { return n::expert(c, l, j, p); }, c.moe.expert_intermediate_size);
    if (c.moe.shared_intermediate_size > 0)
      swiglu([&](Proj p) { return n::shared_expert(l, p); }, c.moe.shared_intermediate_size);
  }
  out.push_back({n::final_norm(), {d}, R::Norm});
  if (!c.tie_word_embeddings) out.push_back({n::lm_head(), {V, d}, R::Weight});
  return out;
}

}  // namespace crossmoe
