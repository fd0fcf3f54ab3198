#include "model/hf_config.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include "model/gguf_model.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

namespace {

using nlohmann::json;

// Typed access to config.json keys; every failure names the key.
class Keys {
 public:
  explicit Keys(const json& j) : j_(j) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int integer(const std::string& key) const {
    require(has(key), "config.json: missing key '" + key + "'");
    return as_int(j_.at(key), key);
  }
  int integer(const std::string& key, int fallback) const {
    return has(key) ? as_int(j_.at(key), key) : fallback;
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    require(j_.at(key).is_number(), "config.json: key '" + key + "' must be a number");
    return j_.at(key).get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    require(j_.at(key).is_boolean(), "config.json: key '" + key + "' must be true or false");
    return j_.at(key).get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    require(j_.at(key).is_string(), "config.json: key '" + key + "' must be a string");
    return j_.at(key).get<std::string>();
  }
  std::vector<int> int_list(const std::string& key) const {
    std::vector<int> out;
    if (!has(key)) return out;
    const json& v = j_.at(key);
    if (v.is_number_integer()) return {as_int(v, key)};
    require(v.is_array(), "config.json: key '" + key + "' must be an integer or a list of integers");
    for (const json& x : v) out.push_back(as_int(x, key));
    return out;
  }
  const json& raw() const { return j_; }

 private:
  static int as_int(const json& v, const std::string& key) {
    require(v.is_number_integer(), "config.json: key '" + key + "' must be an integer");
    const auto x = v.get<int64_t>();
    require(x >= INT32_MIN && x <= INT32_MAX, "config.json: key '" + key + "' is out of range");
    return static_cast<int>(x);
  }
  const json& j_;
};

RopeType rope_type_from(const std::string& name) {
  static const std::map<std::string, RopeType> types = {
      {"default", RopeType::Default}, {"linear", RopeType::Linear}, {"dynamic", RopeType::Dynamic},
      {"yarn", RopeType::Yarn},       {"llama3", RopeType::Llama3}};
  auto it = types.find(name);
  require(it != types.end(), "config.json: unsupported rope type '" + name +
                                 "' (supported: default, linear, dynamic, yarn, llama3)");
  return it->second;
}

// RoPE settings live either at the top level (rope_theta + rope_scaling) or, as recent
// transformers versions write them, in one rope_parameters object.
const json* rope_scaling(const Keys& k) {
  const json* scaling = nullptr;
  if (k.has("rope_parameters")) scaling = &k.raw().at("rope_parameters");
  else if (k.has("rope_scaling")) scaling = &k.raw().at("rope_scaling");
  require(!scaling || scaling->is_object(), "config.json: 'rope_scaling' must be an object");
  return scaling;
}

// YaRN's default attention factor 0.1 * mscale * ln(factor) + 1 (1 for factors up to 1).
double yarn_mscale(double factor, double mscale) { return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0; }

RopeConfig read_rope(const Keys& k, double default_theta) {
  RopeConfig r;
  r.theta = k.number("rope_theta", default_theta);
  const json* scaling = rope_scaling(k);
  if (!scaling) return r;
  const Keys s(*scaling);
  r.theta = s.number("rope_theta", r.theta);
  r.type = rope_type_from(s.string("rope_type", s.string("type", "default")));
  r.factor = s.number("factor", 1.0);
  r.original_max_position_embeddings = s.integer(
      "original_max_position_embeddings", k.integer("original_max_position_embeddings", 0));
  r.low_freq_factor = s.number("low_freq_factor", 1.0);
  r.high_freq_factor = s.number("high_freq_factor", 4.0);
  r.beta_fast = s.number("beta_fast", 32.0);
  r.beta_slow = s.number("beta_slow", 1.0);
  r.attention_factor = s.number("attention_factor", 0.0);
  r.truncate = s.boolean("truncate", true);
  if (r.type == RopeType::Yarn) {
    // As transformers 5.17 computes YaRN for every model type read here: the pretraining length
    // is a top-level original_max_position_embeddings where config.json has one (its RoPE code
    // standardizes the parameters again once the config's extra keys are attributes, and then
    // prefers that attribute), else the RoPE parameters' own, else max_position_embeddings; and
    // 'factor' is taken as given (transformers only warns where it differs from
    // max_position_embeddings / original_max_position_embeddings), that ratio when it is null.
    r.original_max_position_embeddings =
        k.has("original_max_position_embeddings")
            ? k.integer("original_max_position_embeddings")
            : s.integer("original_max_position_embeddings", k.integer("max_position_embeddings"));
    require(r.original_max_position_embeddings > 0, "config.json: yarn 'original_max_position_embeddings' must be positive");
    require(scaling->contains("factor"), "config.json: yarn RoPE needs 'factor'");
    if (!s.has("factor")) r.factor = double(k.integer("max_position_embeddings")) / r.original_max_position_embeddings;
    // DeepSeek's form of the attention factor, as transformers reads it when both are given.
    const double mscale = s.number("mscale", 0.0), mscale_all_dim = s.number("mscale_all_dim", 0.0);
    if (!s.has("attention_factor") && mscale != 0 && mscale_all_dim != 0)
      r.attention_factor = yarn_mscale(r.factor, mscale) / yarn_mscale(r.factor, mscale_all_dim);
  }
  return r;
}

// Keys every LLaMA-lineage config shares.
ModelConfig read_decoder(const Keys& k, double default_theta) {
  ModelConfig c;
  c.model_type = k.string("model_type", "");
  c.vocab_size = k.integer("vocab_size");
  c.hidden_size = k.integer("hidden_size");
  c.num_layers = k.integer("num_hidden_layers");
  c.num_heads = k.integer("num_attention_heads");
  c.num_kv_heads = k.integer("num_key_value_heads", c.num_heads);
  require(c.num_heads > 0, "config: 'num_attention_heads' must be positive");
  c.head_dim = k.integer("head_dim", c.hidden_size / c.num_heads);
  c.intermediate_size = k.integer("intermediate_size", 0);
  c.rms_norm_eps = k.number("rms_norm_eps", 1e-6);
  c.max_position_embeddings = k.integer("max_position_embeddings", 4096);
  c.tie_word_embeddings = k.boolean("tie_word_embeddings", false);
  c.attention_bias = k.boolean("attention_bias", false);
  c.rope = read_rope(k, default_theta);
  c.bos_token_id = k.integer("bos_token_id", -1);
  c.eos_token_ids = k.int_list("eos_token_id");
  c.layer_is_moe.assign(std::max(c.num_layers, 0), false);
  return c;
}

void reject_sliding_window(const Keys& k) {
  require(!k.boolean("use_sliding_window", false),
          "config.json: 'use_sliding_window' true is not supported");
}

ModelConfig read_llama(const Keys& k) {
  require(k.integer("pretraining_tp", 1) == 1, "config.json: 'pretraining_tp' other than 1 is not supported");
  require(!k.boolean("mlp_bias", false), "config.json: 'mlp_bias' true is not supported");
  ModelConfig c = read_decoder(k, 10000.0);
  c.intermediate_size = k.integer("intermediate_size");
  return c;
}

ModelConfig read_qwen3(const Keys& k) {
  reject_sliding_window(k);
  ModelConfig c = read_decoder(k, 10000.0);
  c.intermediate_size = k.integer("intermediate_size");
  c.qk_norm = QkNorm::PerHead;
  return c;
}

ModelConfig read_qwen3_moe(const Keys& k) {
  reject_sliding_window(k);
  ModelConfig c = read_decoder(k, 10000.0);
  c.qk_norm = QkNorm::PerHead;
  // Published checkpoints say num_experts; transformers 5 writes num_local_experts.
  c.moe.num_experts = k.has("num_experts") ? k.integer("num_experts") : k.integer("num_local_experts");
  c.moe.top_k = k.integer("num_experts_per_tok");
  c.moe.expert_intermediate_size = k.integer("moe_intermediate_size");
  c.moe.norm_topk_prob = k.boolean("norm_topk_prob", false);
  const int step = k.integer("decoder_sparse_step", 1);
  require(step > 0, "config.json: 'decoder_sparse_step' must be positive");
  const std::vector<int> dense = k.int_list("mlp_only_layers");
  for (int l = 0; l < c.num_layers; ++l)
    c.layer_is_moe[l] = c.moe.num_experts > 0 && (l + 1) % step == 0 &&
                        std::find(dense.begin(), dense.end(), l) == dense.end();
  return c;
}

ModelConfig read_olmoe(const Keys& k) {
  ModelConfig c = read_decoder(k, 10000.0);
  c.qk_norm = QkNorm::Full;
  if (k.has("clip_qkv")) c.clip_qkv = k.number("clip_qkv", 0.0);
  if (k.has("rope_freq_factors")) {  // a GGUF's rope_freqs, kept when it is quantized into a directory
    const json& f = k.raw().at("rope_freq_factors");
    require(f.is_array(), "config.json: 'rope_freq_factors' must be a list of numbers");
    for (const json& x : f) {
      require(x.is_number() && x.get<double>() > 0 && x.get<double>() < 1e30,
              "config.json: 'rope_freq_factors' must be a list of positive numbers");
      c.rope.freq_factors.push_back(float(x.get<double>()));
    }
  }
  c.moe.num_experts = k.integer("num_experts");
  c.moe.top_k = k.integer("num_experts_per_tok");
  c.moe.expert_intermediate_size = k.integer("intermediate_size");
  c.moe.norm_topk_prob = k.boolean("norm_topk_prob", false);
  c.layer_is_moe.assign(c.num_layers, true);
  return c;
}

ModelConfig read_mixtral(const Keys& k) {
  ModelConfig c = read_decoder(k, 1e6);
  c.naming = TensorNaming::Mixtral;
  c.sliding_window = k.integer("sliding_window", 0);
  c.moe.num_experts = k.integer("num_local_experts");
  c.moe.top_k = k.integer("num_experts_per_tok");
  c.moe.expert_intermediate_size = k.integer("intermediate_size");
  c.moe.norm_topk_prob = true;
  c.layer_is_moe.assign(c.num_layers, true);
  return c;
}

// DeepSeek-style MoE keys, shared by Megrez2 (megrez_moe) and crossmoe's own type.
void read_deepseek_style_moe(const Keys& k, ModelConfig& c) {
  c.moe.num_experts = k.integer("n_routed_experts");
  c.moe.top_k = k.integer("num_experts_per_tok");
  c.moe.expert_intermediate_size = k.integer("moe_intermediate_size");
  c.moe.shared_intermediate_size = c.moe.expert_intermediate_size * k.integer("n_shared_experts", 0);
  const std::string scoring = k.string("scoring_func", "softmax");
  require(scoring == "softmax" || scoring == "sigmoid",
          "config.json: 'scoring_func' must be softmax or sigmoid, got '" + scoring + "'");
  c.moe.scoring = scoring == "sigmoid" ? Scoring::Sigmoid : Scoring::Softmax;
  const std::string method = k.string("topk_method", "greedy");
  require(method == "greedy" || method == "noaux_tc" || method == "group_limited_greedy",
          "config.json: unsupported 'topk_method' '" + method + "'");
  c.moe.score_correction_bias = method == "noaux_tc";
  c.moe.n_group = k.integer("n_group", 1);
  c.moe.topk_group = k.integer("topk_group", c.moe.n_group);
  c.moe.norm_topk_prob = k.boolean("norm_topk_prob", false);
  c.moe.routed_scaling_factor = k.number("routed_scaling_factor", 1.0);
  c.moe.pre_gated = k.boolean("pre_gate", false);
  const int first_dense = k.integer("first_k_dense_replace", 0);
  const int freq = k.integer("moe_layer_freq", 1);
  require(freq > 0, "config.json: 'moe_layer_freq' must be positive");
  require(first_dense >= 0 && first_dense <= c.num_layers,
          "config.json: 'first_k_dense_replace' must be between 0 and 'num_hidden_layers'");
  for (int l = 0; l < c.num_layers; ++l) c.layer_is_moe[l] = l >= first_dense && l % freq == 0;
  c.moe.group_start_layer = first_dense;
}

// RoPE as Megrez2's published inference code (vLLM's megrez_moe) reads it: rope_theta and
// rope_scaling only; a top-level original_max_position_embeddings overrides the one in
// rope_scaling; YaRN takes 'factor' as given (as transformers does) and 'attn_factor' multiplies
// its default attention scale. Keys that code would read
// differently from transformers, or not at all, are errors rather than silent differences.
RopeConfig read_megrez_rope(const Keys& k) {
  require(!(k.has("rope_parameters") && k.has("rope_scaling")),
          "config.json: megrez_moe: give RoPE settings in 'rope_scaling' or 'rope_parameters', not both");
  require(!k.has("rope_parameters"),
          "config.json: megrez_moe: 'rope_parameters' is not read by Megrez2's code; use 'rope_theta' and 'rope_scaling'");
  RopeConfig r;
  r.theta = k.number("rope_theta", 10000.0);
  if (!k.has("rope_scaling")) return r;
  const json& scaling = k.raw().at("rope_scaling");
  require(scaling.is_object(), "config.json: 'rope_scaling' must be an object");
  const Keys s(scaling);
  r.type = rope_type_from(s.string("rope_type", s.string("type", "default")));
  require(r.type != RopeType::Dynamic,
          "config.json: megrez_moe: 'dynamic' RoPE scaling is computed differently by Megrez2's code and is not supported");
  r.factor = s.number("factor", 1.0);
  r.original_max_position_embeddings = k.has("original_max_position_embeddings")
                                           ? k.integer("original_max_position_embeddings")
                                           : s.integer("original_max_position_embeddings", 0);
  r.low_freq_factor = s.number("low_freq_factor", 1.0);
  r.high_freq_factor = s.number("high_freq_factor", 4.0);
  if (r.type != RopeType::Yarn) return r;
  require(s.has("factor"), "config.json: megrez_moe: yarn 'rope_scaling' needs 'factor'");
  require(r.original_max_position_embeddings > 0,
          "config.json: megrez_moe: yarn needs 'original_max_position_embeddings' (in 'rope_scaling' or at the top level)");
  require(!s.has("attention_factor"),
          "config.json: megrez_moe: yarn 'attention_factor' is not read by Megrez2's code; use 'attn_factor'");
  require(s.number("extrapolation_factor", 1.0) == 1.0,
          "config.json: megrez_moe: yarn 'extrapolation_factor' other than 1 is not supported");
  require(s.boolean("truncate", true), "config.json: megrez_moe: yarn 'truncate' false is not supported");
  r.beta_fast = s.number("beta_fast", 32.0);
  r.beta_slow = s.number("beta_slow", 1.0);
  const double default_scale = r.factor <= 1 ? 1.0 : 0.1 * std::log(r.factor) + 1.0;
  r.attention_factor = default_scale * s.number("attn_factor", 1.0);
  return r;
}

// Megrez2 as its published inference code (vLLM's megrez_moe) reads config.json. Keys that code
// requires are required here too: a default would surface later as a "missing tensor".
ModelConfig read_megrez_moe(const Keys& k) {
  for (const char* key : {"pre_gate", "experts_shared_frequency", "n_shared_experts"})
    require(k.has(key), std::string("config.json: megrez_moe: missing key '") + key + "'");
  if (k.integer("n_group", 1) > 1)
    require(k.has("topk_group"), "config.json: megrez_moe: missing key 'topk_group' (required when 'n_group' > 1)");
  ModelConfig c = read_decoder(k, 10000.0);
  c.rope = read_megrez_rope(k);
  read_deepseek_style_moe(k, c);
  c.moe.group_size = k.integer("experts_shared_frequency");
  require(c.moe.group_size > 0, "config.json: 'experts_shared_frequency' must be positive");
  c.moe.cross_layer = c.moe.group_size > 1 ? CrossLayer::SharedPool : CrossLayer::Local;
  // The published code splits each layer's input from first_k_dense_replace on into (router
  // input, hidden state), which only the layer before can provide.
  require(!c.moe.pre_gated || k.integer("first_k_dense_replace", 0) > 0,
          "config.json: megrez_moe: 'pre_gate' needs 'first_k_dense_replace' >= 1 (a layer before the first MoE layer)");
  return c;
}

// DeepSeek-V2 and V3 as transformers' DeepseekV2 / DeepseekV3 code computes them: multi-head
// latent attention, and from first_k_dense_replace on an MoE layer per layer (transformers reads no
// moe_layer_freq) with shared experts. Keys whose transformers defaults are a full-size model's
// are required rather than defaulted. Layers past num_hidden_layers (the multi-token-prediction
// layers, num_nextn_predict_layers) are not part of the model and their tensors are not read.
ModelConfig read_deepseek_latent(const Keys& k, const std::string& type, const std::vector<std::string>& required) {
  for (const std::string& key : required)
    require(k.has(key), "config.json: " + type + ": missing key '" + key + "'");
  require(k.raw().contains("q_lora_rank"),
          "config.json: " + type + ": missing key 'q_lora_rank' (null for a model with one q projection)");
  require(k.integer("moe_layer_freq", 1) == 1,
          "config.json: " + type + ": 'moe_layer_freq' other than 1 is not supported (transformers makes every layer "
          "from first_k_dense_replace on an MoE layer)");
  require(!k.boolean("mlp_bias", false), "config.json: 'mlp_bias' true is not supported");
  ModelConfig c = read_decoder(k, 10000.0);
  LatentAttention a;
  a.q_lora_rank = k.integer("q_lora_rank", 0);
  require(!k.has("q_lora_rank") || a.q_lora_rank > 0, "config.json: 'q_lora_rank' must be positive or null");
  a.kv_lora_rank = k.integer("kv_lora_rank");
  a.qk_nope_head_dim = k.integer("qk_nope_head_dim");
  a.qk_rope_head_dim = k.integer("qk_rope_head_dim");
  a.v_head_dim = k.integer("v_head_dim");
  c.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;  // config.json's head_dim is the RoPE width
  c.latent_attention = a;
  // As transformers' attention: under any RoPE scaling with mscale_all_dim, the softmax scale is
  // multiplied by the square of YaRN's mscale for mscale_all_dim.
  if (const json* scaling = rope_scaling(k)) {
    const Keys s(*scaling);
    const double mscale_all_dim = s.number("mscale_all_dim", 0.0);
    if (c.rope.type != RopeType::Default && mscale_all_dim != 0) {
      const double m = yarn_mscale(s.number("factor", 1.0), mscale_all_dim);
      c.attention_scale_factor = m * m;
    }
  }
  read_deepseek_style_moe(k, c);
  return c;
}

// DeepSeek-V3 (and the models of its layout: Moonlight, Kimi): the router is sigmoid with the
// correction bias and grouped top-k whatever scoring_func and topk_method say (transformers reads
// neither: other values are refused); RoPE on interleaved pairs unless rope_interleave is false.
ModelConfig read_deepseek_v3(const Keys& k) {
  require(k.string("scoring_func", "sigmoid") == "sigmoid",
          "config.json: deepseek_v3: 'scoring_func' other than sigmoid is not supported (transformers routes by sigmoid)");
  require(k.string("topk_method", "noaux_tc") == "noaux_tc",
          "config.json: deepseek_v3: 'topk_method' other than noaux_tc is not supported (transformers routes with the "
          "correction bias)");
  ModelConfig c = read_deepseek_latent(
      k, "deepseek_v3",
      {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "n_shared_experts",
       "n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor", "first_k_dense_replace"});
  c.latent_attention->rope_interleave = k.boolean("rope_interleave", true);
  c.moe.scoring = Scoring::Sigmoid;
  c.moe.score_correction_bias = true;
  return c;
}

// DeepSeek-V2: a softmax router, top-k over all experts ("greedy") or within the topk_group groups
// of best single expert ("group_limited_greedy"), never renormalised (transformers' V2 router
// ignores norm_topk_prob), times routed_scaling_factor; RoPE always on interleaved pairs (a
// complex multiply per pair, which is the same rotation).
ModelConfig read_deepseek_v2(const Keys& k) {
  require(k.string("scoring_func", "softmax") == "softmax",
          "config.json: deepseek_v2: 'scoring_func' other than softmax is not supported (transformers routes by softmax)");
  const std::string method = k.string("topk_method", "greedy");
  require(method == "greedy" || method == "group_limited_greedy",
          "config.json: deepseek_v2: 'topk_method' must be greedy or group_limited_greedy, got '" + method + "'");
  std::vector<std::string> required = {"kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                       "n_routed_experts", "num_experts_per_tok", "n_shared_experts"};
  if (method == "group_limited_greedy") required.insert(required.end(), {"n_group", "topk_group"});
  ModelConfig c = read_deepseek_latent(k, "deepseek_v2", required);
  c.moe.norm_topk_prob = false;
  if (method == "greedy") c.moe.n_group = c.moe.topk_group = 1;
  return c;
}

ModelConfig read_crossmoe(const Keys& k) {
  ModelConfig c = read_decoder(k, 10000.0);
  const std::string qk = k.string("qk_norm", "none");
  if (qk == "none") c.qk_norm = QkNorm::None;
  else if (qk == "per_head") c.qk_norm = QkNorm::PerHead;
  else if (qk == "full") c.qk_norm = QkNorm::Full;
  else throw Error("config.json: 'qk_norm' must be none, per_head or full, got '" + qk + "'");
  if (k.has("clip_qkv")) c.clip_qkv = k.number("clip_qkv", 0.0);
  if (k.integer("n_routed_experts", 0) > 0) {
    read_deepseek_style_moe(k, c);
    const std::string mode = k.string("cross_layer_mode", "local");
    if (mode == "local") c.moe.cross_layer = CrossLayer::Local;
    else if (mode == "shared_pool") c.moe.cross_layer = CrossLayer::SharedPool;
    else if (mode == "reuse") c.moe.cross_layer = CrossLayer::Reuse;
    else throw Error("config.json: 'cross_layer_mode' must be local, shared_pool or reuse, got '" + mode + "'");
    c.moe.group_size = k.integer("cross_layer_group_size", 1);
  }
  return c;
}

const std::map<std::string, std::function<ModelConfig(const Keys&)>>& readers() {
  static const std::map<std::string, std::function<ModelConfig(const Keys&)>> r = {
      {"llama", read_llama},   {"qwen3", read_qwen3},         {"qwen3_moe", read_qwen3_moe},
      {"olmoe", read_olmoe},   {"mixtral", read_mixtral},     {"megrez_moe", read_megrez_moe},
      {"deepseek_v2", read_deepseek_v2}, {"deepseek_v3", read_deepseek_v3}, {"crossmoe", read_crossmoe}};
  return r;
}

}  // namespace

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const auto& [name, reader] : readers()) out.push_back(name);
  return out;
}

ModelConfig parse_model_config(const json& j) {
  require(j.is_object(), "config.json: expected a JSON object");
  const Keys k(j);
  require(k.has("model_type"), "config.json: missing key 'model_type'");
  const std::string type = k.string("model_type", "");
  auto it = readers().find(type);
  if (it == readers().end()) {
    std::string list;
    for (const auto& name : supported_model_types()) list += (list.empty() ? "" : ", ") + name;
    throw Error("config.json: unknown model_type '" + type + "' (supported: " + list + ")");
  }
  ModelConfig c = it->second(k);
  c.finalize();
  return c;
}

ModelConfig read_model_config(const std::filesystem::path& model_dir) {
  if (is_gguf_file(model_dir)) return gguf_model_config(GgufFile(model_dir));
  ModelConfig c = parse_model_config(read_json_file(model_dir / "config.json"));
  // Generation stops at the eos tokens of generation_config.json too, as transformers' generate does.
  const auto generation = model_dir / "generation_config.json";
  if (std::filesystem::exists(generation)) {
    const nlohmann::json g = read_json_file(generation);
    if (g.is_object())
      for (int id : Keys(g).int_list("eos_token_id"))
        if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
          c.eos_token_ids.push_back(id);
  }
  return c;
}

json to_crossmoe_json(const ModelConfig& c) {
  require(!c.latent_attention, "a crossmoe-type config.json cannot describe multi-head latent attention (" +
                                   c.model_type + "): keep the model's own config.json");
  json j;
  j["architectures"] = {"CrossMoeForCausalLM"};
  j["model_type"] = "crossmoe";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["intermediate_size"] = c.intermediate_size;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["qk_norm"] = to_string(c.qk_norm);
  if (c.clip_qkv) j["clip_qkv"] = *c.clip_qkv;
  if (!c.rope.freq_factors.empty()) j["rope_freq_factors"] = c.rope.freq_factors;
  j["rope_theta"] = c.rope.theta;
  if (c.rope.type != RopeType::Default) {
    j["rope_scaling"] = {{"rope_type", to_string(c.rope.type)},
                         {"factor", c.rope.factor},
                         {"original_max_position_embeddings", c.rope.original_max_position_embeddings},
                         {"low_freq_factor", c.rope.low_freq_factor},
                         {"high_freq_factor", c.rope.high_freq_factor},
                         {"beta_fast", c.rope.beta_fast},
                         {"beta_slow", c.rope.beta_slow},
                         {"attention_factor", c.rope.attention_factor},
                         {"truncate", c.rope.truncate}};
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = "bfloat16";
  // MoE layers are expressed as first_k_dense_replace + moe_layer_freq (l >= first and
  // l % freq == 0), with the cross-layer groups starting at first_k_dense_replace.
  const auto first_moe = std::find(c.layer_is_moe.begin(), c.layer_is_moe.end(), true);
  if (first_moe != c.layer_is_moe.end()) {
    const int first = c.moe.group_start_layer >= 0 ? c.moe.group_start_layer
                                                   : static_cast<int>(first_moe - c.layer_is_moe.begin());
    const auto pattern_is = [&](int freq) {
      for (int l = 0; l < c.num_layers; ++l)
        if (c.layer_is_moe[l] != (l >= first && l % freq == 0)) return false;
      return true;
    };
    int freq = 1;
    while (freq <= c.num_layers && !pattern_is(freq)) ++freq;
    require(freq <= c.num_layers, "crossmoe config: the MoE layers must be every moe_layer_freq-th layer from "
                                  "first_k_dense_replace on");
    j["n_routed_experts"] = c.moe.num_experts;
    j["num_experts_per_tok"] = c.moe.top_k;
    j["moe_intermediate_size"] = c.moe.expert_intermediate_size;
    require(c.moe.shared_intermediate_size % c.moe.expert_intermediate_size == 0,
            "crossmoe config: shared expert width must be a multiple of the expert width");
    j["n_shared_experts"] = c.moe.shared_intermediate_size / c.moe.expert_intermediate_size;
    j["scoring_func"] = to_string(c.moe.scoring);
    j["topk_method"] = c.moe.score_correction_bias ? "noaux_tc" : "greedy";
    j["n_group"] = c.moe.n_group;
    j["topk_group"] = c.moe.topk_group;
    j["norm_topk_prob"] = c.moe.norm_topk_prob;
    j["routed_scaling_factor"] = c.moe.routed_scaling_factor;
    j["pre_gate"] = c.moe.pre_gated;
    j["first_k_dense_replace"] = first;
    j["moe_layer_freq"] = freq;
    j["cross_layer_mode"] = to_string(c.moe.cross_layer);
    j["cross_layer_group_size"] = c.moe.group_size;
  }
  return j;
}

}  // namespace crossmoe
