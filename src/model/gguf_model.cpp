#include "model/gguf_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "model/tensor_names.hpp"
#include "util/error.hpp"
#include "util/quant.hpp"

namespace crossmoe {

namespace {

namespace n = tensor_names;

// The llama.cpp architectures read, and those written (export_gguf).
const std::set<std::string>& read_architectures() {
  static const std::set<std::string> a = {"llama", "qwen3", "qwen3moe", "olmoe", "deepseek2"};
  return a;
}
const std::set<std::string>& written_architectures() {
  static const std::set<std::string> a = {"llama", "qwen3", "qwen3moe", "olmoe", "deepseek2"};
  return a;
}

std::string architecture_list(const std::set<std::string>& architectures) {
  std::string s;
  for (const auto& a : architectures) s += (s.empty() ? "" : ", ") + a;
  return s;
}

// A metadata integer that must fit a positive int (sizes and counts).
int size_key(const GgufFile& f, const std::string& key) {
  const GgufValue* v = f.find(key);
  require(v != nullptr, f.label() + ": missing metadata '" + key + "'");
  int64_t x = 0;
  if (v->type == GgufType::Array) {
    // Some writers store per-layer values (head counts, widths) as arrays; crossmoe's description
    // has one value per model.
    require(v->element != GgufType::String && v->element != GgufType::F32 && v->element != GgufType::F64 &&
                !v->integers.empty() &&
                std::all_of(v->integers.begin(), v->integers.end(), [&](int64_t y) { return y == v->integers[0]; }),
            f.label() + ": metadata '" + key + "' differs between layers, which crossmoe does not support");
    x = v->integers[0];
  } else {
    x = f.integer(key);
  }
  require(x > 0 && x <= INT32_MAX, f.label() + ": metadata '" + key + "' is " + std::to_string(x) + "; expected a positive size");
  return int(x);
}

int size_key(const GgufFile& f, const std::string& key, int fallback) { return f.has(key) ? size_key(f, key) : fallback; }

const std::map<std::string, Proj>& ffn_suffixes() {
  static const std::map<std::string, Proj> m = {{"gate", Proj::Gate}, {"up", Proj::Up}, {"down", Proj::Down}};
  return m;
}

const char* const kRopeFreqs = "rope_freqs.weight";

}  // namespace

namespace {

// llama.cpp's deepseek2 (src/models/deepseek2.cpp): multi-head latent attention as llama.cpp's
// converter writes it since it split kv_b_proj (attn_k_b / attn_v_b: the "MLA" key and value
// lengths present), with the MoE settings of the file. Fills what the generic keys do not.
void read_deepseek2(const GgufFile& f, ModelConfig& c) {
  const std::string& label = f.label();
  const auto key = [](const std::string& k) { return "deepseek2." + k; };
  const auto refuse = [&](const std::string& why) { throw Error(label + ": deepseek2: " + why); };
  if (f.integer(key("nextn_predict_layers"), 0) != 0) refuse("multi-token-prediction layers (nextn_predict_layers) are not supported");
  if (f.real(key("attention.temperature_scale"), 0.0) != 0.0) refuse("attention temperature scaling is not supported");
  if (!f.has(key("attention.key_length_mla")) || !f.has(key("attention.value_length_mla")) || f.find_tensor("blk.0.attn_kv_b.weight"))
    refuse("no 'attention.key_length_mla' / 'value_length_mla' (a file converted before llama.cpp split attn_kv_b into "
           "attn_k_b and attn_v_b) is not supported: convert the model again");
  // The converter writes latent attention as one key-value head whose key is [latent | k_rope]
  // and whose value is the latent ("absorbed"); the per-head widths are the MLA keys.
  require(size_key(f, key("attention.head_count_kv"), c.num_heads) == 1,
          label + ": deepseek2: '" + key("attention.head_count_kv") + "' must be 1 (latent attention's one cached head)");
  LatentAttention a;
  a.kv_lora_rank = size_key(f, key("attention.kv_lora_rank"));
  // llama.cpp reads q_lora_rank 0 or absent as one q projection (attn_q).
  if (f.has(key("attention.q_lora_rank")) && f.integer(key("attention.q_lora_rank")) != 0)
    a.q_lora_rank = size_key(f, key("attention.q_lora_rank"));
  a.qk_rope_head_dim = size_key(f, key("rope.dimension_count"));
  c.head_dim = size_key(f, key("attention.key_length_mla"));
  a.qk_nope_head_dim = c.head_dim - a.qk_rope_head_dim;
  if (a.qk_nope_head_dim < 1) refuse("'" + key("rope.dimension_count") + "' leaves no unrotated key dims");
  a.v_head_dim = size_key(f, key("attention.value_length_mla"));
  if (size_key(f, key("attention.key_length")) != a.kv_lora_rank + a.qk_rope_head_dim ||
      size_key(f, key("attention.value_length")) != a.kv_lora_rank)
    refuse("'attention.key_length' / 'value_length' are not kv_lora_rank + rope dims / kv_lora_rank");
  a.rope_interleave = true;          // llama.cpp's deepseek2 rotates adjacent pairs
  a.latent_norm_eps = c.rms_norm_eps;  // every norm of llama.cpp's graph takes the file's epsilon
  c.latent_attention = a;
  c.num_kv_heads = c.num_heads;
  // YaRN as llama.cpp's context and graph compute it: the rotation is not scaled (a converter's
  // yarn_log_multiplier, DeepSeek's mscale_all_dim / 10, makes llama.cpp cancel YaRN's attention
  // factor; without one the rotated dims keep it), and the softmax scale is multiplied by
  // (rotation's factor * (1 + 0.1 * mscale_all_dim * ln factor))^2.
  if (f.real(key("rope.scaling.attn_factor"), 1.0) != 1.0) refuse("'rope.scaling.attn_factor' other than 1 is not supported");
  if (c.rope.type == RopeType::Linear) refuse("linear RoPE scaling is not supported");
  if (c.rope.type == RopeType::Yarn) {
    if (!(c.rope.factor >= 1.0 && c.rope.factor < 1e30)) refuse("a YaRN factor below 1, or not finite, is not supported");
    const double log_factor = std::log(c.rope.factor);
    const double mscale_all_dim = f.real(key("rope.scaling.yarn_log_multiplier"), 0.0) / 0.1;
    c.rope.attention_factor = mscale_all_dim != 0.0 ? 1.0 : 1.0 + 0.1 * log_factor;
    const double m = c.rope.attention_factor * (1.0 + 0.1 * mscale_all_dim * log_factor);
    c.attention_scale_factor = m * m;
  }
  c.attention_bias = false;

  const int64_t leading_dense = f.integer(key("leading_dense_block_count"), 0);
  if (leading_dense < 0 || leading_dense > c.num_layers) refuse("'leading_dense_block_count' is outside the layers");
  const int dense_lead = int(leading_dense);
  c.layer_is_moe.assign(c.num_layers, false);
  for (int l = dense_lead; l < c.num_layers; ++l) c.layer_is_moe[l] = true;
  if (dense_lead > 0) c.intermediate_size = size_key(f, key("feed_forward_length"));
  if (dense_lead == c.num_layers) return;
  MoeConfig& m = c.moe;
  m.num_experts = size_key(f, key("expert_count"));
  m.top_k = size_key(f, key("expert_used_count"));
  m.expert_intermediate_size = size_key(f, key("expert_feed_forward_length"));
  if (!f.has(key("expert_shared_count"))) refuse("missing metadata '" + key("expert_shared_count") + "'");
  const int64_t shared_count = f.integer(key("expert_shared_count"));
  if (shared_count < 0 || shared_count * m.expert_intermediate_size > INT32_MAX)
    refuse("'" + key("expert_shared_count") + "' is out of range");
  m.shared_intermediate_size = m.expert_intermediate_size * int(shared_count);
  // llama.cpp's gating when the key is absent: softmax, but sigmoid for GLM-4.7-Flash's shape
  // (src/models/deepseek2.cpp keeps older DeepSeek-V2 files working this way).
  int64_t gating = f.integer(key("expert_gating_func"), 0);
  if (gating == 0) gating = (c.num_layers == 47 || c.num_layers == 48) && f.integer(key("vocab_size"), c.vocab_size) == 154880 ? 2 : 1;
  if (gating != 1 && gating != 2)
    refuse("'" + key("expert_gating_func") + "' " + std::to_string(gating) + " is not supported (1 softmax, 2 sigmoid)");
  m.scoring = gating == 2 ? Scoring::Sigmoid : Scoring::Softmax;
  // exp_probs_b biases the choice where a layer has one (llama.cpp loads it as optional). llama.cpp
  // scores each group by the sum of its best two experts with or without one, which crossmoe's
  // runtime does with a correction bias: a grouped file and the layers without exp_probs_b get a
  // zero one (gguf_tensor_views), the same choice and weights.
  bool any_bias = false;
  for (int l = dense_lead; l < c.num_layers; ++l) any_bias |= f.find_tensor("blk." + std::to_string(l) + ".exp_probs_b.bias") != nullptr;
  m.score_correction_bias = any_bias;
  m.norm_topk_prob = f.boolean(key("expert_weights_norm"), false);
  const double scale = f.real(key("expert_weights_scale"), 0.0);
  m.routed_scaling_factor = scale == 0.0 ? 1.0 : scale;  // llama.cpp scales by neither 0 nor 1
  const int64_t groups = f.integer(key("expert_group_count"), 0);
  if (groups > 1) {
    m.n_group = size_key(f, key("expert_group_count"));
    m.topk_group = size_key(f, key("expert_group_used_count"));
    if (m.topk_group >= m.n_group) refuse("'expert_group_used_count' must be below 'expert_group_count' (as llama.cpp asserts)");
    if (m.num_experts / m.n_group < 2) refuse("groups of one expert are not supported (llama.cpp scores a group by its best two)");
    m.score_correction_bias = true;
  }
  m.group_start_layer = dense_lead;
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& label = f.label();
  const std::string arch = f.string("general.architecture");
  require(read_architectures().count(arch), label + ": architecture '" + arch + "' is not supported (supported: " +
                                                architecture_list(read_architectures()) + ")");
  const bool latent = arch == "deepseek2";
  const auto key = [&](const std::string& k) { return arch + "." + k; };
  require(latent || !f.find_tensor("blk.0.attn_kv_a_mqa.weight"),
          label + ": latent attention (attn_kv_a_mqa) outside the deepseek2 architecture is not supported");
  const GgufTensor* embed = f.find_tensor("token_embd.weight");
  require(embed && embed->ne.size() == 2, label + ": missing 2-dimensional tensor 'token_embd.weight'");

  ModelConfig c;
  c.hidden_size = size_key(f, key("embedding_length"));
  require(embed->ne[1] <= INT32_MAX, label + ": 'token_embd.weight' has too many rows");
  c.vocab_size = int(embed->ne[1]);
  c.num_layers = size_key(f, key("block_count"));
  c.num_heads = size_key(f, key("attention.head_count"));
  if (!latent) {
    c.num_kv_heads = size_key(f, key("attention.head_count_kv"), c.num_heads);
    c.head_dim = size_key(f, key("attention.key_length"), c.hidden_size / c.num_heads);
    require(size_key(f, key("attention.value_length"), c.head_dim) == c.head_dim,
            label + ": '" + key("attention.value_length") + "' differs from the key length, which crossmoe does not support");
    require(size_key(f, key("rope.dimension_count"), c.head_dim) == c.head_dim,
            label + ": '" + key("rope.dimension_count") + "' is not the head size: partial RoPE is not supported");
  }
  c.rms_norm_eps = f.real(key("attention.layer_norm_rms_epsilon"), 0);
  require(c.rms_norm_eps > 0, label + ": '" + key("attention.layer_norm_rms_epsilon") + "' is missing or not positive");
  c.max_position_embeddings = size_key(f, key("context_length"), 4096);
  c.rope.theta = f.real(key("rope.freq_base"), 10000.0);
  const std::string scaling = f.string(key("rope.scaling.type"), "none");
  if (scaling == "linear") {
    c.rope.type = RopeType::Linear;
    c.rope.factor = f.real(key("rope.scaling.factor"), 1.0);
  } else if (scaling == "yarn") {
    c.rope.type = RopeType::Yarn;
    c.rope.factor = f.real(key("rope.scaling.factor"), 1.0);
    c.rope.original_max_position_embeddings = size_key(f, key("rope.scaling.original_context_length"));
    c.rope.beta_fast = f.real(key("rope.scaling.yarn_beta_fast"), 32.0);
    c.rope.beta_slow = f.real(key("rope.scaling.yarn_beta_slow"), 1.0);
  } else {
    require(scaling == "none", label + ": rope scaling '" + scaling + "' is not supported (none, linear, yarn)");
  }
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (latent) {
    require(!f.find_tensor(kRopeFreqs), label + ": deepseek2: tensor '" + std::string(kRopeFreqs) + "' is not read by llama.cpp's deepseek2");
    read_deepseek2(f, c);
    // Named after the router: DeepSeek-V3's is sigmoid with the correction bias (exp_probs_b).
    const bool v3 = c.moe.scoring == Scoring::Sigmoid && c.moe.group_start_layer < c.num_layers &&
                    f.find_tensor("blk." + std::to_string(c.moe.group_start_layer) + ".exp_probs_b.bias");
    c.model_type = v3 ? "deepseek_v3" : "deepseek_v2";
  } else if (const GgufTensor* freqs = f.find_tensor(kRopeFreqs)) {
    require(freqs->dtype == DType::F32 && freqs->ne.size() == 1 && freqs->ne[0] == c.head_dim / 2,
            label + ": tensor '" + std::string(kRopeFreqs) + "' must be F32 [head size / 2]");
    c.rope.freq_factors.resize(size_t(freqs->ne[0]));
    std::memcpy(c.rope.freq_factors.data(), freqs->data, freqs->nbytes);
  }
  if (!latent) {
    c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    c.intermediate_size = size_key(f, key("feed_forward_length"), 0);
    c.layer_is_moe.assign(c.num_layers, false);
    for (int l = 0; l < c.num_layers; ++l)
      c.layer_is_moe[l] = f.find_tensor("blk." + std::to_string(l) + ".ffn_gate_inp.weight") != nullptr;
  }
  const bool moe = std::find(c.layer_is_moe.begin(), c.layer_is_moe.end(), true) != c.layer_is_moe.end();
  if (arch == "llama") {
    c.model_type = moe ? "mixtral" : "llama";
  } else if (arch == "qwen3" || arch == "qwen3moe") {
    c.model_type = arch == "qwen3" ? "qwen3" : "qwen3_moe";
    c.qk_norm = QkNorm::PerHead;
  } else if (arch == "olmoe") {
    c.model_type = "olmoe";
    c.qk_norm = QkNorm::Full;
    if (f.has(key("attention.clamp_kqv"))) c.clip_qkv = f.real(key("attention.clamp_kqv"), 0);
  }
  require(moe || c.intermediate_size > 0, label + ": missing metadata '" + key("feed_forward_length") + "'");
  if (moe && !latent) {
    c.moe.num_experts = size_key(f, key("expert_count"));
    c.moe.top_k = size_key(f, key("expert_used_count"));
    c.moe.expert_intermediate_size =
        arch == "qwen3moe" ? size_key(f, key("expert_feed_forward_length")) : size_key(f, key("feed_forward_length"));
    // The routers of these architectures in llama.cpp's graphs (src/models/*.cpp).
    c.moe.norm_topk_prob = arch != "olmoe";
    require(f.integer(key("expert_shared_count"), 0) == 0, label + ": shared experts are not supported for " + arch);
    require(f.integer(key("expert_gating_func"), 1) == 1, label + ": only softmax expert gating is supported");
    const double scale = f.real(key("expert_weights_scale"), 0.0);
    require(scale == 0.0 || scale == 1.0, label + ": '" + key("expert_weights_scale") + "' other than 1 is not supported");
  }
  // Every layer's tensors are in the file, each MoE layer's experts in merged tensors of expert_count
  // entries: this also bounds the description by the file's size before its tensor list is built.
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string blk = "blk." + std::to_string(l) + ".";
    require(f.find_tensor(blk + "attn_norm.weight") != nullptr,
            label + ": missing tensor '" + blk + "attn_norm.weight' (" + key("block_count") + " is " + std::to_string(c.num_layers) + ")");
    if (!c.layer_is_moe[l]) continue;
    for (const char* part : {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"}) {
      const GgufTensor* t = f.find_tensor(blk + part);
      require(t && t->ne.size() == 3 && t->ne[2] == c.moe.num_experts,
              label + ": tensor '" + blk + part + "' must hold " + key("expert_count") + " = " +
                  std::to_string(c.moe.num_experts) + " experts");
    }
  }
  // The tokens llama.cpp's generation ends on, and the BOS it puts before a prompt.
  for (const char* k : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (f.has(k)) {
      const int64_t id = f.integer(k);
      require(id >= 0 && id < c.vocab_size, label + ": metadata '" + std::string(k) + "' is outside the vocabulary");
      if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), int(id)) == c.eos_token_ids.end())
        c.eos_token_ids.push_back(int(id));
    }
  // (Whether a prompt starts with it is the tokenizer's: gguf_tokenizer_json's post-processor.)
  if (f.has("tokenizer.ggml.bos_token_id")) {
    const int64_t id = f.integer("tokenizer.ggml.bos_token_id");
    require(id >= 0 && id < c.vocab_size, label + ": metadata 'tokenizer.ggml.bos_token_id' is outside the vocabulary");
    c.bos_token_id = int(id);
  }
  try {
    c.finalize();
  } catch (const Error& e) {
    throw Error(label + ": " + e.what());
  }
  return c;
}

void permute_head_rows(const std::byte* in, std::byte* out, int64_t rows, size_t row_bytes, int heads, bool to_gguf) {
  const int64_t d = rows / heads, half = d / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf = h * d + j * half + i, gguf = h * d + 2 * i + j;
        const int64_t from = to_gguf ? hf : gguf, to = to_gguf ? gguf : hf;
        std::memcpy(out + size_t(to) * row_bytes, in + size_t(from) * row_bytes, row_bytes);
      }
}

GgufName gguf_name_of(const ModelConfig& c, const std::string& arch, const std::string& hf) {
  if (hf == n::embed()) return {"token_embd.weight"};
  if (hf == n::lm_head()) return {"output.weight"};
  if (hf == n::final_norm()) return {"output_norm.weight"};
  const bool permuted = arch == "llama";
  // "model.layers.L.rest": only layer L's names can match.
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0) return {};
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return {};
  int l = 0;
  for (size_t i = prefix.size(); i < dot; ++i) {
    if (hf[i] < '0' || hf[i] > '9' || l > c.num_layers) return {};
    l = l * 10 + (hf[i] - '0');
  }
  if (l >= c.num_layers) return {};
  {
    const std::string blk = "blk." + std::to_string(l) + ".";
    if (hf == n::input_norm(l)) return {blk + "attn_norm.weight"};
    if (hf == n::post_attention_norm(l)) return {blk + "ffn_norm.weight"};
    for (char w : {'q', 'k', 'v', 'o'}) {
      const std::string base = blk + (w == 'o' ? std::string("attn_output") : std::string("attn_") + w);
      const int heads = !permuted ? 0 : w == 'q' ? c.num_heads : w == 'k' ? c.num_kv_heads : 0;
      if (hf == n::attn(l, w)) return {base + ".weight", heads};
      if (w != 'o' && hf == n::attn_bias(l, w)) return {base + ".bias", heads};
      if ((w == 'q' || w == 'k') && hf == n::qk_norm(l, w)) return {blk + "attn_" + w + "_norm.weight"};
    }
    if (c.latent_attention) {
      // kv_b_proj is two tensors in the file (attn_k_b, attn_v_b), joined by gguf_tensor_views.
      static const std::pair<LatentPart, const char*> latent[] = {{LatentPart::QA, "attn_q_a.weight"},
                                                                 {LatentPart::QANorm, "attn_q_a_norm.weight"},
                                                                 {LatentPart::QB, "attn_q_b.weight"},
                                                                 {LatentPart::KvA, "attn_kv_a_mqa.weight"},
                                                                 {LatentPart::KvANorm, "attn_kv_a_norm.weight"}};
      for (const auto& [part, name] : latent)
        if (hf == n::latent_attn(l, part)) return {blk + name};
    }
    for (const auto& [word, p] : ffn_suffixes()) {
      if (hf == n::dense_mlp(l, p)) return {blk + "ffn_" + word + ".weight"};
      if (hf == n::shared_expert(l, p)) return {blk + "ffn_" + word + "_shexp.weight"};
    }
    if (!c.layers.empty() && c.layers[l].is_moe) {
      if (hf == n::router(c, l)) return {blk + "ffn_gate_inp.weight"};
      if (hf == n::router_bias(c, l)) return {blk + "exp_probs_b.bias"};
      const size_t at = hf.find(".experts.");
      if (at != std::string::npos) {
        const int j = std::atoi(hf.c_str() + at + 9);
        if (j >= 0 && j < c.moe.num_experts)
          for (const auto& [word, p] : ffn_suffixes())
            if (hf == n::expert(c, l, j, p)) return {blk + "ffn_" + word + "_exps.weight", 0, j};
      }
    }
  }
  return {};
}

namespace {

// A tensor's values in f32, ne[0] at a time.
std::vector<float> tensor_floats(const GgufTensor& t) {
  const int64_t cols = t.ne[0];
  const size_t row_bytes = dtype_row_bytes(t.dtype, cols), rows = t.nbytes / row_bytes;
  std::vector<float> out(rows * size_t(cols));
  for (size_t r = 0; r < rows; ++r) {
    const std::byte* in = t.data + r * row_bytes;
    float* o = out.data() + r * size_t(cols);
    if (dtype_block(t.dtype) > 1) {
      quant::dequantize_row(t.dtype, in, cols, o);
      continue;
    }
    for (int64_t i = 0; i < cols; ++i) {
      uint16_t h = 0;
      if (t.dtype != DType::F32) std::memcpy(&h, in + i * 2, 2);
      if (t.dtype == DType::F32) std::memcpy(o + i, in + i * 4, 4);
      else o[i] = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
    }
  }
  return out;
}

// Layer l's kv_b_proj [heads x (qk_nope + v), kv_lora_rank] joined from the converter's split:
// attn_k_b [heads, kv_lora_rank, qk_nope] (each head's k rows, transposed) and attn_v_b
// [heads, v, kv_lora_rank]. The dtype of the two when they share a float type (the values are
// moved, not converted), otherwise f32.
TensorView joined_kv_b(const GgufFile& f, const ModelConfig& c, int l, std::vector<std::unique_ptr<std::byte[]>>& owned) {
  const LatentAttention& a = *c.latent_attention;
  const std::string blk = "blk." + std::to_string(l) + ".";
  const int64_t H = c.num_heads, nope = a.qk_nope_head_dim, vd = a.v_head_dim, kvl = a.kv_lora_rank;
  const GgufTensor* k = f.find_tensor(blk + "attn_k_b.weight");
  const GgufTensor* v = f.find_tensor(blk + "attn_v_b.weight");
  require(k && k->ne == std::vector<int64_t>{nope, kvl, H},
          f.label() + ": tensor '" + blk + "attn_k_b.weight' must be [heads, kv_lora_rank, qk_nope] = [" + std::to_string(H) +
              ", " + std::to_string(kvl) + ", " + std::to_string(nope) + "]");
  require(v && v->ne == std::vector<int64_t>{kvl, vd, H},
          f.label() + ": tensor '" + blk + "attn_v_b.weight' must be [heads, v, kv_lora_rank] = [" + std::to_string(H) + ", " +
              std::to_string(vd) + ", " + std::to_string(kvl) + "]");
  const bool same = k->dtype == v->dtype && dtype_block(k->dtype) == 1;
  TensorView out;
  out.name = n::latent_attn(l, LatentPart::KvB);
  out.dtype = same ? k->dtype : DType::F32;
  out.shape = {H * (nope + vd), kvl};
  const size_t element = dtype_size(out.dtype);
  out.nbytes = size_t(H * (nope + vd) * kvl) * element;
  owned.push_back(std::make_unique<std::byte[]>(out.nbytes));
  std::byte* dst = owned.back().get();
  // Element (row, j) of kv_b from element index `at` of a source in the output's dtype.
  const auto place = [&](const std::byte* src, int64_t at, int64_t row, int64_t j) {
    std::memcpy(dst + size_t(row * kvl + j) * element, src + size_t(at) * element, element);
  };
  std::vector<float> k_f32, v_f32;
  if (!same) {
    k_f32 = tensor_floats(*k);
    v_f32 = tensor_floats(*v);
  }
  const std::byte* k_src = same ? k->data : reinterpret_cast<const std::byte*>(k_f32.data());
  const std::byte* v_src = same ? v->data : reinterpret_cast<const std::byte*>(v_f32.data());
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < kvl; ++j) {
      for (int64_t i = 0; i < nope; ++i) place(k_src, (h * kvl + j) * nope + i, h * (nope + vd) + i, j);
      for (int64_t i = 0; i < vd; ++i) place(v_src, (h * vd + i) * kvl + j, h * (nope + vd) + nope + i, j);
    }
  out.data = dst;
  return out;
}

}  // namespace

std::set<std::string> gguf_tensors_left_out(const GgufFile& f, const ModelConfig& c,
                                            const std::function<bool(const std::string&)>& keep) {
  const std::string arch = f.string("general.architecture");
  std::map<std::string, bool> any_kept;  // per GGUF tensor: whether any tensor read from it is kept
  for (const TensorSpec& spec : expected_tensors(c)) {
    const GgufName g = gguf_name_of(c, arch, spec.name);
    if (!g.name.empty()) any_kept[g.name] = any_kept[g.name] || keep(spec.name);
  }
  std::set<std::string> left_out;
  for (const auto& [name, kept] : any_kept)
    if (!kept) left_out.insert(name);
  return left_out;
}

std::vector<TensorView> gguf_tensor_views(const GgufFile& f, const ModelConfig& c,
                                          std::vector<std::unique_ptr<std::byte[]>>& owned) {
  const std::string arch = f.string("general.architecture");
  std::vector<TensorView> views;
  // Latent attention's attn_k_b and attn_v_b: read into kv_b_proj, layer by layer.
  std::set<std::string> split_kv_b;
  if (c.latent_attention)
    for (int l = 0; l < c.num_layers; ++l) {
      for (const char* part : {"attn_k_b.weight", "attn_v_b.weight"}) split_kv_b.insert("blk." + std::to_string(l) + "." + part);
      views.push_back(joined_kv_b(f, c, l, owned));
      // Zero correction biases where read_deepseek2 needs one and the layer has none.
      if (c.layers[l].is_moe && c.moe.score_correction_bias && !f.find_tensor("blk." + std::to_string(l) + ".exp_probs_b.bias")) {
        TensorView zero;
        zero.name = n::router_bias(c, l);
        zero.dtype = DType::F32;
        zero.shape = {c.num_candidates(l)};
        zero.nbytes = size_t(c.num_candidates(l)) * sizeof(float);
        owned.push_back(std::make_unique<std::byte[]>(zero.nbytes));
        std::memset(owned.back().get(), 0, zero.nbytes);
        zero.data = owned.back().get();
        views.push_back(zero);
      }
    }
  // The inverse of gguf_name_of over every tensor the description implies.
  std::map<std::string, std::vector<std::pair<std::string, GgufName>>> by_gguf;
  for (const TensorSpec& spec : expected_tensors(c)) {
    GgufName g = gguf_name_of(c, arch, spec.name);
    if (!g.name.empty()) by_gguf[g.name].push_back({spec.name, g});
  }
  for (const GgufTensor& t : f.tensors()) {
    if (t.name == kRopeFreqs || split_kv_b.count(t.name)) continue;  // read into the description, or joined above
    const auto it = by_gguf.find(t.name);
    require(it != by_gguf.end(), f.label() + ": tensor '" + t.name + "' has no place in crossmoe's description of this " +
                                     arch + " model");
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());  // ggml's ne is innermost first
    const size_t row_bytes = dtype_row_bytes(t.dtype, t.ne[0]);
    for (const auto& [hf_name, g] : it->second) {
      TensorView v;
      v.name = hf_name;
      v.dtype = t.dtype;
      v.shape = shape;
      v.data = t.data;
      v.nbytes = t.nbytes;
      v.file_offset = t.file_offset;
      if (g.expert >= 0) {
        require(shape.size() == 3 && shape[0] == c.moe.num_experts,
                f.label() + ": tensor '" + t.name + "' must hold " + std::to_string(c.moe.num_experts) + " experts");
        v.shape = {shape[1], shape[2]};
        v.nbytes = t.nbytes / size_t(shape[0]);
        v.file_offset = t.file_offset + v.nbytes * size_t(g.expert);
        v.data = t.data ? t.data + v.nbytes * size_t(g.expert) : nullptr;  // null: left in the file
      } else if (g.permute_heads > 0) {
        const int64_t rows = shape[0];
        const int heads = g.permute_heads;
        require(rows % heads == 0 && (rows / heads) % 2 == 0,
                f.label() + ": tensor '" + t.name + "' has " + std::to_string(rows) + " rows, not whole heads of even size");
        const size_t bytes_per_row = shape.size() == 1 ? dtype_size(t.dtype) : row_bytes;
        owned.push_back(std::make_unique<std::byte[]>(t.nbytes));
        permute_head_rows(t.data, owned.back().get(), rows, bytes_per_row, heads, false);
        v.data = owned.back().get();
      }
      views.push_back(std::move(v));
    }
  }
  return views;
}

namespace {

// YaRN's rotation factor as the runtime applies it (RopeConfig: 0 is the default).
double yarn_rotation_factor(const RopeConfig& r) {
  return r.attention_factor != 0.0 ? r.attention_factor : r.factor <= 1.0 ? 1.0 : 1.0 + 0.1 * std::log(r.factor);
}

bool near(double a, double b) { return std::abs(a - b) <= 1e-6 * std::max(1.0, std::abs(b)); }

// The dense layers before the first MoE layer (deepseek2's leading_dense_block_count).
int leading_dense_layers(const ModelConfig& c) {
  int n = 0;
  while (n < c.num_layers && !c.layer_is_moe[n]) ++n;
  return n;
}

// The yarn_log_multiplier that makes llama.cpp's deepseek2 scale a YaRN model as this description
// does (read_deepseek2's arithmetic backwards), nullopt for none: with one, llama.cpp leaves the
// rotation unscaled and multiplies the softmax scale by (1 + multiplier * ln factor)^2; without
// one, both take 1 + 0.1 * ln factor. Throws through `refuse` for what neither expresses.
template <typename Refuse>
std::optional<double> deepseek2_yarn_log_multiplier(const ModelConfig& c, const Refuse& refuse) {
  const RopeConfig& r = c.rope;
  const double rotation = yarn_rotation_factor(r), log_factor = std::log(r.factor), m = std::sqrt(c.attention_scale_factor);
  if (near(rotation, 1.0) && log_factor > 0.0 && m > 1.0) return (m - 1.0) / log_factor;
  if (near(rotation, r.factor <= 1.0 ? 1.0 : 1.0 + 0.1 * log_factor) && near(m, rotation)) return std::nullopt;
  refuse("YaRN with a rotation factor of " + std::to_string(rotation) + " and a softmax scale factor of " +
         std::to_string(c.attention_scale_factor) + " (llama.cpp's deepseek2 scales the rotation by 1 and the softmax by "
         "(1 + m ln factor)^2, or both by 1 + 0.1 ln factor)");
  return std::nullopt;
}

// What llama.cpp's deepseek2 graph (src/models/deepseek2.cpp) runs, checked on a latent-attention
// description; `refuse` throws naming the first thing it does not.
template <typename Refuse>
void check_deepseek2(const ModelConfig& c, const Refuse& refuse) {
  const LatentAttention& a = *c.latent_attention;
  if (c.qk_norm != QkNorm::None || c.clip_qkv || c.attention_bias) refuse("latent attention with q/k norms, clip_qkv or biases");
  if (!near(a.latent_norm_eps, c.rms_norm_eps))
    refuse("latent norms whose epsilon (" + std::to_string(a.latent_norm_eps) + ") is not rms_norm_eps (" +
           std::to_string(c.rms_norm_eps) + "): llama.cpp's deepseek2 takes one epsilon for every norm");
  if (c.rope.type != RopeType::Default && c.rope.type != RopeType::Yarn)
    refuse("RoPE scaling other than YaRN on latent attention");
  if (!c.rope.freq_factors.empty()) refuse("RoPE frequency factors on latent attention");
  if (!a.rope_interleave)
    refuse("latent attention rotating the two halves of the rope dims (rope_interleave false; llama.cpp's deepseek2 "
           "rotates adjacent pairs)");
  if (c.rope.type == RopeType::Yarn) {
    if (!c.rope.truncate) refuse("YaRN without its correction range rounded to whole dims");
    (void)deepseek2_yarn_log_multiplier(c, refuse);
  } else if (c.attention_scale_factor != 1.0) {
    refuse("a softmax scale factor without YaRN");
  }
  const int leading_dense = leading_dense_layers(c);
  if (!std::all_of(c.layer_is_moe.begin() + leading_dense, c.layer_is_moe.end(), [](bool b) { return b; }))
    refuse("dense layers after the first MoE layer (llama.cpp's deepseek2 has only leading dense layers)");
  if (leading_dense == c.num_layers) return;
  const MoeConfig& m = c.moe;
  if (m.cross_layer != CrossLayer::Local || m.group_size != 1) refuse("cross-layer expert groups (" + to_string(m.cross_layer) + ")");
  if (m.pre_gated) refuse("pre-gated routing");
  if (m.shared_intermediate_size == 0 || m.shared_intermediate_size % m.expert_intermediate_size != 0)
    refuse("MoE layers whose shared experts are not a whole number (one or more) of routed experts' width "
           "(llama.cpp's deepseek2 requires shared experts of expert_shared_count x expert_feed_forward_length)");
  if (m.n_group > 1 && m.topk_group < m.n_group) {
    if (!m.score_correction_bias)
      refuse("group-limited routing that scores a group by its best expert (DeepSeek-V2's group_limited_greedy; "
             "llama.cpp scores a group by the sum of its best two)");
    if (m.num_experts / m.n_group < 2) refuse("groups of one expert (llama.cpp scores a group by its best two)");
  }
}

// deepseek2's keys beyond the generic ones, as llama.cpp's deepseek2 loads them: latent
// attention as one cached head of [latent | k_rope] with the per-head widths in the *_mla keys
// (q_lora_rank written as 0 when there is one q projection: llama.cpp requires the key unless
// the layer count is DeepSeek-V2-Lite's), the leading dense layers, shared experts in units of
// a routed expert's width, and the router.
void add_deepseek2_metadata(GgufWriter& w, const ModelConfig& c) {
  const auto key = [](const std::string& k) { return "deepseek2." + k; };
  const LatentAttention& a = *c.latent_attention;
  w.add_u32(key("attention.head_count_kv"), 1);
  w.add_u32(key("attention.key_length"), uint32_t(a.kv_lora_rank + a.qk_rope_head_dim));
  w.add_u32(key("attention.value_length"), uint32_t(a.kv_lora_rank));
  w.add_u32(key("attention.key_length_mla"), uint32_t(a.qk_nope_head_dim + a.qk_rope_head_dim));
  w.add_u32(key("attention.value_length_mla"), uint32_t(a.v_head_dim));
  w.add_u32(key("attention.q_lora_rank"), uint32_t(a.q_lora_rank));
  w.add_u32(key("attention.kv_lora_rank"), uint32_t(a.kv_lora_rank));
  w.add_u32(key("rope.dimension_count"), uint32_t(a.qk_rope_head_dim));
  if (c.rope.type == RopeType::Yarn)
    if (const std::optional<double> m = deepseek2_yarn_log_multiplier(c, [](const std::string& why) { throw Error(why); }))
      w.add_f32(key("rope.scaling.yarn_log_multiplier"), float(*m));
  const int leading_dense = leading_dense_layers(c);
  w.add_u32(key("leading_dense_block_count"), uint32_t(leading_dense));
  const MoeConfig& m = c.moe;
  const bool moe = leading_dense < c.num_layers;
  w.add_u32(key("expert_feed_forward_length"), uint32_t(moe ? m.expert_intermediate_size : 0));
  w.add_u32(key("expert_shared_count"), uint32_t(moe ? m.shared_intermediate_size / m.expert_intermediate_size : 0));
  if (!moe) return;
  w.add_u32(key("expert_gating_func"), m.scoring == Scoring::Sigmoid ? 2 : 1);  // llama_expert_gating_func_type
  w.add_bool(key("expert_weights_norm"), m.norm_topk_prob);
  w.add_f32(key("expert_weights_scale"), float(m.routed_scaling_factor));
  if (m.n_group > 1 && m.topk_group < m.n_group) {
    w.add_u32(key("expert_group_count"), uint32_t(m.n_group));
    w.add_u32(key("expert_group_used_count"), uint32_t(m.topk_group));
  }
}

}  // namespace

std::string gguf_architecture(const ModelConfig& c) {
  const bool moe = std::find(c.layer_is_moe.begin(), c.layer_is_moe.end(), true) != c.layer_is_moe.end();
  const auto refuse = [&](const std::string& why) {
    throw Error("no llama.cpp architecture crossmoe writes (" + architecture_list(written_architectures()) +
                ") expresses this model: " + why);
  };
  if (c.sliding_window > 0) refuse("sliding-window attention");
  if (c.latent_attention) {
    check_deepseek2(c, refuse);
    return "deepseek2";
  }
  if (c.clip_qkv && c.qk_norm != QkNorm::Full) refuse("clip_qkv without OLMoE's q/k norm");
  if (c.rope.type == RopeType::Dynamic) refuse("dynamic RoPE scaling");
  if (moe) {
    const MoeConfig& m = c.moe;
    if (m.cross_layer != CrossLayer::Local || m.group_size != 1) refuse("cross-layer expert groups (" + to_string(m.cross_layer) + ")");
    if (m.shared_intermediate_size > 0) refuse("shared experts");
    if (m.scoring != Scoring::Softmax || m.score_correction_bias) refuse("a sigmoid router");
    if (m.n_group > 1 || m.routed_scaling_factor != 1.0 || m.pre_gated) refuse("grouped, scaled or pre-gated routing");
    if (!std::all_of(c.layer_is_moe.begin(), c.layer_is_moe.end(), [](bool b) { return b; }))
      refuse("dense layers between MoE layers");
  }
  std::string arch;
  if (c.qk_norm == QkNorm::None) arch = "llama";
  else if (c.qk_norm == QkNorm::PerHead) arch = moe ? "qwen3moe" : "qwen3";
  else if (moe) arch = "olmoe";
  else refuse("a full-width q/k norm on a dense model");
  if (c.rope.type == RopeType::Llama3 && arch != "llama") refuse("LLaMA-3 RoPE scaling outside the llama architecture");
  if (arch != "llama" && c.attention_bias) refuse("attention biases with q/k norms");
  if (arch == "olmoe" && (c.num_heads * c.head_dim != c.hidden_size || c.num_kv_heads != c.num_heads))
    refuse("OLMoE with grouped or resized q/k (llama.cpp's olmoe norms q and k over the hidden size)");
  if (moe && c.moe.norm_topk_prob != (arch != "olmoe"))
    refuse(arch + " in llama.cpp " + (arch == "olmoe" ? "never" : "always") + " renormalises the top-k routing weights, this model " +
           (c.moe.norm_topk_prob ? "does" : "does not"));
  return arch;
}

std::vector<float> gguf_rope_freq_factors(const ModelConfig& c) {
  if (c.rope.type != RopeType::Llama3) return c.rope.freq_factors;
  require(c.rope.freq_factors.empty(), "RoPE frequency factors on top of LLaMA-3 scaling cannot be written");
  // The divisor each inverse frequency gets from LLaMA-3 scaling, computed as llama.cpp's converter
  // does (its arithmetic is on float32 tensors, so it is float here too).
  const RopeConfig& r = c.rope;
  const float low_wavelen = float(r.original_max_position_embeddings / r.low_freq_factor);
  const float high_wavelen = float(r.original_max_position_embeddings / r.high_freq_factor);
  const float factor = float(r.factor), low = float(r.low_freq_factor);
  const float span = float(r.high_freq_factor - r.low_freq_factor);
  std::vector<float> factors;
  for (int i = 0; i < c.head_dim / 2; ++i) {
    const float freq = 1.0f / std::pow(float(r.theta), float(2 * i) / float(c.head_dim));
    const float wavelen = float(2 * M_PI) / freq;
    if (wavelen < high_wavelen) {
      factors.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(factor);
    } else {
      const float smooth = (float(r.original_max_position_embeddings) / wavelen - low) / span;
      factors.push_back(1.0f / ((1.0f - smooth) / factor + smooth));
    }
  }
  return factors;
}

void add_gguf_model_metadata(GgufWriter& w, const ModelConfig& c, const std::string& name) {
  const std::string arch = gguf_architecture(c);
  const auto key = [&](const std::string& k) { return arch + "." + k; };
  const bool moe = std::find(c.layer_is_moe.begin(), c.layer_is_moe.end(), true) != c.layer_is_moe.end();
  w.add_string("general.architecture", arch);
  w.add_string("general.name", name);
  w.add_u32(key("block_count"), uint32_t(c.num_layers));
  w.add_u32(key("context_length"), uint32_t(c.max_position_embeddings));
  w.add_u32(key("embedding_length"), uint32_t(c.hidden_size));
  const bool latent = arch == "deepseek2";
  w.add_u32(key("feed_forward_length"), uint32_t(moe && arch != "qwen3moe" && !latent ? c.moe.expert_intermediate_size
                                                                                       : std::max(c.intermediate_size, 1)));
  w.add_u32(key("attention.head_count"), uint32_t(c.num_heads));
  if (latent) {
    add_deepseek2_metadata(w, c);
  } else {
    w.add_u32(key("attention.head_count_kv"), uint32_t(c.num_kv_heads));
    w.add_u32(key("attention.key_length"), uint32_t(c.head_dim));
    w.add_u32(key("attention.value_length"), uint32_t(c.head_dim));
    w.add_u32(key("rope.dimension_count"), uint32_t(c.head_dim));
  }
  w.add_f32(key("rope.freq_base"), float(c.rope.theta));
  w.add_f32(key("attention.layer_norm_rms_epsilon"), float(c.rms_norm_eps));
  if (c.rope.type == RopeType::Linear) {
    w.add_string(key("rope.scaling.type"), "linear");
    w.add_f32(key("rope.scaling.factor"), float(c.rope.factor));
  } else if (c.rope.type == RopeType::Yarn) {
    w.add_string(key("rope.scaling.type"), "yarn");
    w.add_f32(key("rope.scaling.factor"), float(c.rope.factor));
    w.add_u32(key("rope.scaling.original_context_length"), uint32_t(c.rope.original_max_position_embeddings));
    w.add_f32(key("rope.scaling.yarn_beta_fast"), float(c.rope.beta_fast));
    w.add_f32(key("rope.scaling.yarn_beta_slow"), float(c.rope.beta_slow));
  }
  if (c.clip_qkv) w.add_f32(key("attention.clamp_kqv"), float(*c.clip_qkv));
  if (moe) {
    w.add_u32(key("expert_count"), uint32_t(c.moe.num_experts));
    w.add_u32(key("expert_used_count"), uint32_t(c.moe.top_k));
    if (arch == "qwen3moe") w.add_u32(key("expert_feed_forward_length"), uint32_t(c.moe.expert_intermediate_size));
  }
}

void add_gguf_special_tokens(GgufWriter& w, const ModelConfig& c) {
  // llama.cpp ends generation at eos, eot and eom: a model's two eos ids go in the first two.
  require(c.eos_token_ids.size() <= 2, "a model with more than two eos tokens cannot be written as GGUF");
  if (!c.eos_token_ids.empty()) w.add_u32("tokenizer.ggml.eos_token_id", uint32_t(c.eos_token_ids[0]));
  if (c.eos_token_ids.size() > 1) w.add_u32("tokenizer.ggml.eot_token_id", uint32_t(c.eos_token_ids[1]));
  if (c.bos_token_id >= 0) w.add_u32("tokenizer.ggml.bos_token_id", uint32_t(c.bos_token_id));
}

}  // namespace crossmoe
