// config.json readers, the layer plan (groups, owners, candidates) and parameter counts.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include "model/checkpoint.hpp"
#include "model/hf_config.hpp"
#include "model/init.hpp"
#include "model/rope.hpp"
#include "runtime/kv_pool.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

using namespace crossmoe;
using nlohmann::json;

namespace {

const std::string kHf = std::string(CROSSMOE_FIXTURES) + "/hf/";

// Megrez2-Preview's shape as the notes publish it (kv heads and head size are not given there:
// 4 kv heads of 128 is an assumption that affects only the small attention share).
json megrez2_preview() {
  return {{"model_type", "megrez_moe"}, {"vocab_size", 128880}, {"hidden_size", 2048},
          {"num_hidden_layers", 31}, {"num_attention_heads", 16}, {"num_key_value_heads", 4},
          {"head_dim", 128}, {"intermediate_size", 10944}, {"moe_intermediate_size", 1408},
          {"n_routed_experts", 64}, {"n_shared_experts", 4}, {"num_experts_per_tok", 6},
          {"first_k_dense_replace", 1}, {"moe_layer_freq", 1}, {"experts_shared_frequency", 3},
          {"pre_gate", true}, {"scoring_func", "sigmoid"}, {"topk_method", "noaux_tc"},
          {"n_group", 8}, {"topk_group", 4}, {"norm_topk_prob", true}, {"routed_scaling_factor", 1.0},
          {"rope_theta", 5000000.0}, {"tie_word_embeddings", false}, {"max_position_embeddings", 32768}};
}

TEST(Config, ReadsEveryFixtureAndCountsItsTensors) {
  for (const char* name : {"llama", "qwen3", "qwen3_moe", "olmoe", "mixtral", "deepseek_v3", "deepseek_v3_q_proj",
                           "deepseek_v2", "deepseek_v2_group"}) {
    const ModelConfig c = read_model_config(kHf + name);
    const Checkpoint ck(kHf + name);
    // Each fixture stores all its tensors in one dtype.
    const int64_t stored = int64_t(ck.total_bytes() / dtype_size(ck.find("model.embed_tokens.weight")->dtype));
    EXPECT_EQ(count_parameters(c).stored, stored) << name;
  }
}

TEST(Config, MapsRealModelTypesOntoTheDescription) {
  const ModelConfig llama = read_model_config(kHf + "llama");
  EXPECT_EQ(llama.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(llama.rope.theta, 50000.0);
  EXPECT_EQ(llama.qk_norm, QkNorm::None);
  const ModelConfig qwen3 = read_model_config(kHf + "qwen3");
  EXPECT_EQ(qwen3.head_dim, 24);
  EXPECT_TRUE(qwen3.tie_word_embeddings);
  EXPECT_EQ(qwen3.qk_norm, QkNorm::PerHead);
  const ModelConfig qmoe = read_model_config(kHf + "qwen3_moe");
  EXPECT_FALSE(qmoe.layers[0].is_moe);  // mlp_only_layers = [0]
  EXPECT_TRUE(qmoe.layers[1].is_moe && qmoe.layers[2].is_moe);
  EXPECT_EQ(qmoe.num_candidates(1), 8);
  EXPECT_TRUE(qmoe.moe.norm_topk_prob);
  const ModelConfig olmoe = read_model_config(kHf + "olmoe");
  EXPECT_EQ(olmoe.qk_norm, QkNorm::Full);
  EXPECT_FALSE(olmoe.moe.norm_topk_prob);
  const ModelConfig mixtral = read_model_config(kHf + "mixtral");
  EXPECT_EQ(mixtral.naming, TensorNaming::Mixtral);
  EXPECT_EQ(mixtral.moe.top_k, 2);
}

TEST(Config, RopeSettingsAtTopLevelOrInRopeParameters) {
  json top = {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 8}, {"num_hidden_layers", 1},
              {"num_attention_heads", 2}, {"intermediate_size", 16}, {"rope_theta", 500000.0},
              {"rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}}}};
  ModelConfig a = parse_model_config(top);
  EXPECT_EQ(a.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(a.rope.theta, 500000.0);
  json nested = top;
  nested.erase("rope_theta");
  nested.erase("rope_scaling");
  nested["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 500000.0}};
  ModelConfig b = parse_model_config(nested);
  EXPECT_EQ(b.rope.type, RopeType::Linear);
  EXPECT_DOUBLE_EQ(b.rope.theta, 500000.0);
  json mixtral = {{"model_type", "mixtral"}, {"vocab_size", 10}, {"hidden_size", 8}, {"num_hidden_layers", 1},
                  {"num_attention_heads", 2}, {"intermediate_size", 16}, {"num_local_experts", 2},
                  {"num_experts_per_tok", 1}};
  EXPECT_DOUBLE_EQ(parse_model_config(mixtral).rope.theta, 1e6);  // Mixtral's own default
}

// DeepSeek-V3's config.json as published (deepseek-ai/DeepSeek-V3), the way the Hub writes it:
// top-level rope_theta and rope_scaling with "type".
json deepseek_v3_published() {
  return {{"model_type", "deepseek_v3"}, {"vocab_size", 129280}, {"hidden_size", 7168},
          {"intermediate_size", 18432}, {"moe_intermediate_size", 2048}, {"num_hidden_layers", 61},
          {"num_nextn_predict_layers", 1}, {"num_attention_heads", 128}, {"num_key_value_heads", 128},
          {"n_shared_experts", 1}, {"n_routed_experts", 256}, {"ep_size", 1}, {"routed_scaling_factor", 2.5},
          {"kv_lora_rank", 512}, {"q_lora_rank", 1536}, {"qk_rope_head_dim", 64}, {"v_head_dim", 128},
          {"qk_nope_head_dim", 128}, {"topk_method", "noaux_tc"}, {"n_group", 8}, {"topk_group", 4},
          {"num_experts_per_tok", 8}, {"moe_layer_freq", 1}, {"first_k_dense_replace", 3},
          {"norm_topk_prob", true}, {"scoring_func", "sigmoid"}, {"max_position_embeddings", 163840},
          {"rms_norm_eps", 1e-6}, {"rope_theta", 10000}, {"attention_bias", false},
          {"tie_word_embeddings", false},
          {"rope_scaling",
           {{"beta_fast", 32}, {"beta_slow", 1}, {"factor", 40}, {"mscale", 1.0}, {"mscale_all_dim", 1.0},
            {"original_max_position_embeddings", 4096}, {"type", "yarn"}}}};
}

TEST(Config, DeepSeekV3MapsLatentAttentionAndItsRouter) {
  const ModelConfig c = parse_model_config(deepseek_v3_published());
  ASSERT_TRUE(c.latent_attention);
  EXPECT_EQ(c.latent_attention->q_lora_rank, 1536);
  EXPECT_EQ(c.head_dim, 192);  // qk_nope + qk_rope
  EXPECT_EQ(c.value_head_dim(), 128);
  EXPECT_EQ(c.rope_dim(), 64);
  EXPECT_TRUE(c.latent_attention->rope_interleave);
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 40.0);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 1.0);  // mscale / mscale_all_dim, both 1
  const double mscale = 0.1 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(c.attention_scale_factor, mscale * mscale);
  EXPECT_EQ(c.moe.scoring, Scoring::Sigmoid);
  EXPECT_TRUE(c.moe.score_correction_bias);
  EXPECT_EQ(c.moe.n_group, 8);
  EXPECT_EQ(c.moe.topk_group, 4);
  EXPECT_EQ(c.moe.shared_intermediate_size, 2048);
  EXPECT_FALSE(c.layers[2].is_moe);
  EXPECT_TRUE(c.layers[3].is_moe && c.layers[60].is_moe);
  // The published totals: 671B parameters (the MTP module's aside), 37B active per token.
  const ParamCounts p = count_parameters(c);
  EXPECT_NEAR(double(p.stored) / 1e9, 671.0, 0.1);
  EXPECT_NEAR(double(p.active) / 1e9, 37.5, 0.1);
  // The KV cache keeps [c | k_rope] of each position once per layer, c doubling as the value.
  EXPECT_EQ(KvPool::bytes_per_position(c), 61 * (512 + 64) * 4);

  json no_q_latent = deepseek_v3_published();
  no_q_latent["q_lora_rank"] = nullptr;
  EXPECT_EQ(parse_model_config(no_q_latent).latent_attention->q_lora_rank, 0);
  // What transformers would read differently from the checkpoint's own code, or from its
  // DeepSeek-V3-sized defaults, is an error naming the key.
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"scoring_func", "softmax"}, {"topk_method", "greedy"}, {"moe_layer_freq", 2}, {"num_key_value_heads", 64}}) {
    json bad = deepseek_v3_published();
    bad[key] = value;
    try {
      parse_model_config(bad);
      ADD_FAILURE() << key << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key == "num_key_value_heads" ? "num_key_value_heads" : key), std::string::npos)
          << e.what();
    }
  }
  for (const char* key : {"q_lora_rank", "kv_lora_rank", "n_group", "first_k_dense_replace"}) {
    json bad = deepseek_v3_published();
    bad.erase(key);
    try {
      parse_model_config(bad);
      ADD_FAILURE() << key << " not required";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
  // The crossmoe type cannot describe latent attention: an error, not a config that loses it.
  EXPECT_THROW(to_crossmoe_json(c), Error);
}

TEST(Config, Megrez2PreviewSharesOnePoolPerGroupOfThree) {
  const ModelConfig c = parse_model_config(megrez2_preview());
  EXPECT_FALSE(c.layers[0].is_moe);
  EXPECT_EQ(c.moe.cross_layer, CrossLayer::SharedPool);
  EXPECT_TRUE(c.moe.pre_gated);
  // Layers 1,2,3 form group 0 led by layer 1; 4,5,6 group 1 led by 4; ...
  for (int l = 1; l < 31; ++l) {
    EXPECT_EQ(c.layers[l].group, (l - 1) / 3);
    EXPECT_EQ(c.layers[l].owns_experts, (l - 1) % 3 == 0) << l;
    ASSERT_EQ(c.num_candidates(l), 64);
    EXPECT_EQ(c.layers[l].candidates[5], (ExpertRef{1 + 3 * ((l - 1) / 3), 5}));
  }
  // The published sizes: 7.5B stored, 3B active (the active figure excludes embeddings).
  const ParamCounts p = count_parameters(c);
  EXPECT_NEAR(double(p.stored) / 1e9, 7.5, 0.1);
  EXPECT_NEAR(double(p.active_non_embedding()) / 1e9, 3.0, 0.1);
}

TEST(Config, RexMoeRoutersScoreTheWholeGroup) {
  ModelConfig c = layout_preset("rexmoe");
  c.num_layers = 5;
  c.layer_is_moe = {false, true, true, true, true};
  c.moe.group_size = 3;
  c.finalize();
  // MoE layers 1..4: group 0 = {1, 2, 3}, group 1 = {4} (the last group is shorter).
  EXPECT_EQ(c.num_candidates(2), 3 * c.moe.num_experts);
  EXPECT_EQ(c.layers[2].candidates[c.moe.num_experts], (ExpertRef{2, 0}));
  EXPECT_EQ(c.layers[2].candidates.back(), (ExpertRef{3, c.moe.num_experts - 1}));
  EXPECT_EQ(c.num_candidates(4), c.moe.num_experts);
  // Reuse adds router width only: stored experts equal the layer-local model's.
  ModelConfig local = c;
  local.moe.cross_layer = CrossLayer::Local;
  local.moe.group_size = 1;
  local.finalize();
  const int64_t extra_router = int64_t(c.hidden_size) * c.moe.num_experts * (2 + 2 + 2 + 0);
  EXPECT_EQ(count_parameters(c).stored - count_parameters(local).stored, extra_router);
}

TEST(Config, CrossmoeTypeRoundTrips) {
  for (const auto& layout : layout_names()) {
    ModelConfig c = layout_preset(layout);
    c.finalize();
    const ModelConfig back = parse_model_config(to_crossmoe_json(c));
    EXPECT_EQ(back.layer_is_moe, c.layer_is_moe) << layout;
    EXPECT_EQ(back.moe.cross_layer, c.moe.cross_layer);
    EXPECT_EQ(back.moe.pre_gated, c.moe.pre_gated);
    for (int l = 0; l < c.num_layers; ++l) EXPECT_EQ(back.layers[l].candidates, c.layers[l].candidates);
    EXPECT_EQ(count_parameters(back).stored, count_parameters(c).stored);
  }
}

TEST(Config, GenerationConfigAddsStopTokens) {
  const auto dir = testing_paths::temp_path("genconfig");
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kHf + "llama/config.json", dir / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  write_json_file(dir / "generation_config.json", {{"eos_token_id", {2, 7}}});
  EXPECT_EQ(read_model_config(dir).eos_token_ids, (std::vector<int>{2, 7}));
  std::filesystem::remove_all(dir);
}

void expect_error(const json& j, const std::string& fragment) {
  try {
    parse_model_config(j);
    FAIL() << "no error for " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

// Megrez2's config semantics as its published inference code (vLLM's megrez_moe) reads them.
// YaRN as transformers 5.17 computes it (_compute_yarn_parameters) for every model type whose
// config reads it: 'factor' as given, not max_position_embeddings / original_max_position_embeddings
// (here 8 against a ratio of 4); the pretraining length from a top-level
// original_max_position_embeddings where config.json has one (its RoPE code standardizes again
// once the config's extra keys are attributes, and then prefers that attribute), else the one in
// the RoPE parameters. The expected table is the published formula, in double precision.
TEST(Config, YarnTakesFactorAsGivenForEveryModelTypeThatReadsIt) {
  struct Expected {
    std::vector<double> inv_freq;
    double attention_factor;
  };
  const auto yarn = [](double theta, int dim, double factor, int original, double attention_factor) {
    const auto correction_dim = [&](double rotations) {
      return dim * std::log(original / (rotations * 2 * M_PI)) / (2 * std::log(theta));
    };
    const double low = std::max(std::floor(correction_dim(32)), 0.0);
    double high = std::min(std::ceil(correction_dim(1)), double(dim - 1));
    if (low == high) high += 0.001;
    Expected e{{}, attention_factor};
    for (int i = 0; i < dim / 2; ++i) {
      const double pos_freq = std::pow(theta, 2.0 * i / dim);
      const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      e.inv_freq.push_back(1 / (factor * pos_freq) * ramp + 1 / pos_freq * (1 - ramp));
    }
    return e;
  };
  const auto mscale = [](double factor, double m) { return 0.1 * m * std::log(factor) + 1; };
  for (const char* name : {"llama", "qwen3", "qwen3_moe", "olmoe", "mixtral", "deepseek_v3", "deepseek_v2"})
    for (const bool top_level_original : {false, true}) {
      SCOPED_TRACE(std::string(name) + (top_level_original ? ", top-level original length 32" : ""));
      json j = read_json_file(kHf + name + "/config.json");
      j.erase("rope_scaling");
      const double theta = 20000.0;
      const bool deepseek = j["model_type"].get<std::string>().rfind("deepseek", 0) == 0;
      j["max_position_embeddings"] = 256;
      j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", theta}, {"factor", 8.0},
                              {"original_max_position_embeddings", 64}};
      if (deepseek) {
        j["rope_parameters"]["mscale"] = 1.0;
        j["rope_parameters"]["mscale_all_dim"] = 0.5;
      }
      if (top_level_original) j["original_max_position_embeddings"] = 32;
      const ModelConfig c = parse_model_config(j);
      ASSERT_EQ(c.rope.type, RopeType::Yarn);
      const int dim = c.rope_dim();
      const Expected e = yarn(theta, dim, 8.0, top_level_original ? 32 : 64,
                              deepseek ? mscale(8.0, 1.0) / mscale(8.0, 0.5) : mscale(8.0, 1.0));
      const RopeTable table(c.rope, dim, c.max_position_embeddings);
      for (int i = 0; i < dim / 2; ++i) EXPECT_NEAR(table.inv_freq()[i], e.inv_freq[i], 1e-6 * e.inv_freq[i]) << "pair " << i;
      std::vector<float> cos(dim / 2), sin(dim / 2);
      table.at(100, 101, cos.data(), sin.data());
      for (int i = 0; i < dim / 2; ++i) {
        EXPECT_NEAR(cos[i], std::cos(100 * e.inv_freq[i]) * e.attention_factor, 1e-5) << "pair " << i;
        EXPECT_NEAR(sin[i], std::sin(100 * e.inv_freq[i]) * e.attention_factor, 1e-5) << "pair " << i;
      }
      // DeepSeek's softmax scale takes the square of mscale_all_dim's factor, of 'factor' as given.
      if (deepseek) EXPECT_NEAR(c.attention_scale_factor, mscale(8.0, 0.5) * mscale(8.0, 0.5), 1e-12);
      // A null factor is the ratio of the two lengths; none at all is an error (transformers'
      // KeyError), not a silent 1.
      j["rope_parameters"]["factor"] = nullptr;
      EXPECT_DOUBLE_EQ(parse_model_config(j).rope.factor, 256.0 / (top_level_original ? 32 : 64));
      j["rope_parameters"].erase("factor");
      expect_error(j, "yarn RoPE needs 'factor'");
    }
}

TEST(Config, Megrez2GroupsByLayerIndexWithMoeLayerFreq) {
  json j = megrez2_preview();
  j["num_hidden_layers"] = 9;
  j["first_k_dense_replace"] = 2;
  j["moe_layer_freq"] = 2;
  j["experts_shared_frequency"] = 4;
  const ModelConfig c = parse_model_config(j);
  // MoE layers: l >= 2 and l % 2 == 0. Groups: (l - 2) / 4, so {2, 4} led by 2 and {6, 8} led by 6.
  for (int l = 0; l < 9; ++l) EXPECT_EQ(c.layers[l].is_moe, l >= 2 && l % 2 == 0) << l;
  for (int l : {2, 4}) {
    EXPECT_EQ(c.layers[l].group, 0);
    EXPECT_EQ(c.layers[l].candidates[0].owner_layer, 2);
  }
  for (int l : {6, 8}) {
    EXPECT_EQ(c.layers[l].group, 1);
    EXPECT_EQ(c.layers[l].candidates[0].owner_layer, 6);
  }
  EXPECT_TRUE(c.layers[2].owns_experts && c.layers[6].owns_experts);
  EXPECT_FALSE(c.layers[4].owns_experts || c.layers[8].owns_experts);
  // A group whose first layer (by index) is dense has nobody to own its experts.
  j["first_k_dense_replace"] = 1;
  j["experts_shared_frequency"] = 2;
  expect_error(j, "not an MoE layer");
}

TEST(Config, Megrez2RequiresTheKeysItsCodeReads) {
  for (const char* key : {"pre_gate", "experts_shared_frequency", "n_shared_experts", "topk_group"}) {
    json j = megrez2_preview();
    j.erase(key);
    expect_error(j, std::string("missing key '") + key + "'");
  }
  json j = megrez2_preview();
  j.erase("topk_group");
  j["n_group"] = 1;
  EXPECT_NO_THROW(parse_model_config(j));  // topk_group is needed only with groups
  j = megrez2_preview();
  j["first_k_dense_replace"] = 0;
  expect_error(j, "'pre_gate' needs 'first_k_dense_replace'");
  j["pre_gate"] = false;
  EXPECT_NO_THROW(parse_model_config(j));
}

TEST(Config, Megrez2YarnTakesFactorAsGivenAndTheTopLevelOriginalLength) {
  json j = megrez2_preview();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 4096},
                       {"attn_factor", 1.5}};
  j["original_max_position_embeddings"] = 8192;
  ModelConfig c = parse_model_config(j);
  EXPECT_EQ(c.rope.type, RopeType::Yarn);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);  // transformers would take 32768 / 8192
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, (0.1 * std::log(4.0) + 1.0) * 1.5);
  j.erase("original_max_position_embeddings");
  EXPECT_EQ(parse_model_config(j).rope.original_max_position_embeddings, 4096);
  j["rope_scaling"].erase("original_max_position_embeddings");
  expect_error(j, "yarn needs 'original_max_position_embeddings'");
  j = megrez2_preview();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  expect_error(j, "not both");
  j.erase("rope_scaling");
  expect_error(j, "'rope_parameters' is not read");
}

TEST(Config, BadConfigsNameTheKey) {
  json base = megrez2_preview();
  json j = base;
  j["model_type"] = "gpt_neox";
  expect_error(j, "unknown model_type 'gpt_neox'");
  j = base;
  j.erase("hidden_size");
  expect_error(j, "'hidden_size'");
  j = base;
  j["num_key_value_heads"] = 3;
  expect_error(j, "'num_key_value_heads'");
  j = base;
  j["num_experts_per_tok"] = 100;
  expect_error(j, "'num_experts_per_tok'");
  j = base;
  j["n_routed_experts"] = "many";
  expect_error(j, "'n_routed_experts' must be an integer");
  j = base;
  j["scoring_func"] = "relu";
  expect_error(j, "'scoring_func'");
  j = base;
  j["n_group"] = 7;
  expect_error(j, "'n_group'");
  j = base;
  j.erase("model_type");
  expect_error(j, "'model_type'");
  j = base;
  j["rope_scaling"] = {{"rope_type", "longrope"}};
  expect_error(j, "longrope");
}

}  // namespace
