// Router math and sampling.
#include <gtest/gtest.h>

#include "temp_dir.hpp"

#include <cmath>
#include <map>

#include "runtime/routing.hpp"
#include "runtime/sampler.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

#include <filesystem>

using namespace crossmoe;

namespace {

TEST(Routing, SoftmaxWithAndWithoutRenormalisation) {
  MoeConfig m;
  m.top_k = 2;
  const std::vector<float> s = {0.0f, 2.0f, 1.0f, -1.0f};
  Route r;
  route_token(m, s.data(), 4, nullptr, r);
  double z = 0;
  for (float v : s) z += std::exp(v);
  EXPECT_EQ(r.candidates, (std::vector<int>{1, 2}));
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / z, 1e-6);  // OLMoE: raw probabilities
  m.norm_topk_prob = true;
  route_token(m, s.data(), 4, nullptr, r);
  EXPECT_NEAR(r.weights[0] + r.weights[1], 1.0, 1e-6);
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), 1e-6);
}

TEST(Routing, SigmoidBiasChoosesButDoesNotWeigh) {
  MoeConfig m;
  m.top_k = 1;
  m.scoring = Scoring::Sigmoid;
  m.routed_scaling_factor = 2.5;
  const std::vector<float> s = {1.0f, 0.5f};
  const std::vector<float> bias = {0.0f, 0.3f};
  Route r;
  route_token(m, s.data(), 2, bias.data(), r);
  EXPECT_EQ(r.candidates[0], 1);  // 0.622 + 0.3 beats 0.731
  EXPECT_NEAR(r.weights[0], 2.5 / (1 + std::exp(-0.5)), 1e-6);
  m.norm_topk_prob = true;
  route_token(m, s.data(), 2, bias.data(), r);
  EXPECT_NEAR(r.weights[0], 2.5, 1e-6);
}

TEST(Routing, GroupedTopKAndMasks) {
  MoeConfig m;
  m.top_k = 2;
  m.scoring = Scoring::Sigmoid;
  m.n_group = 2;
  m.topk_group = 1;
  // Group 0 = {0,1,2}, group 1 = {3,4,5}. With a correction bias (here zero) a group scores as
  // its best two: group 0 wins (3 + 2 against 4 - 5 before the sigmoid). Without one it scores as
  // its best expert (group_limited_greedy): group 1 wins with 4.
  const std::vector<float> s = {3.0f, 2.0f, -4.0f, 4.0f, -5.0f, -6.0f};
  const std::vector<float> zero_bias(6, 0.0f);
  Route r;
  route_token(m, s.data(), 6, zero_bias.data(), r);
  EXPECT_EQ(r.candidates, (std::vector<int>{0, 1}));
  route_token(m, s.data(), 6, nullptr, r);
  EXPECT_EQ(r.candidates, (std::vector<int>{3, 4}));
  m.n_group = 1;
  const unsigned char allowed[] = {0, 1, 1, 0, 1, 1};
  route_token(m, s.data(), 6, nullptr, r, allowed);
  EXPECT_EQ(r.candidates, (std::vector<int>{1, 2}));
}

TEST(Routing, MatchesTransformersDeepSeekV3Router) {
  // Sigmoid + correction bias + grouped top-k, as Megrez2 routes: golden decisions from
  // transformers' DeepseekV3TopkRouter (fixtures/make_deepseek_routing.py).
  const auto cases = read_json_file(std::string(CROSSMOE_FIXTURES) + "/deepseek_routing.json");
  ASSERT_EQ(cases.size(), 3u);
  for (const auto& c : cases) {
    MoeConfig m;
    m.scoring = Scoring::Sigmoid;
    m.score_correction_bias = true;
    m.top_k = c["top_k"];
    m.n_group = c["n_group"];
    m.topk_group = c["topk_group"];
    m.norm_topk_prob = c["norm_topk_prob"];
    m.routed_scaling_factor = c["routed_scaling_factor"];
    const auto bias = c["bias"].get<std::vector<float>>();
    const int n = c["n_experts"];
    for (size_t t = 0; t < c["logits"].size(); ++t) {
      const auto logits = c["logits"][t].get<std::vector<float>>();
      Route r;
      route_token(m, logits.data(), n, bias.data(), r);
      // transformers returns the top-k unsorted: compare as index -> weight maps.
      std::map<int, float> ours, theirs;
      for (int i = 0; i < m.top_k; ++i) {
        ours[r.candidates[i]] = r.weights[i];
        theirs[c["indices"][t][i].get<int>()] = c["weights"][t][i].get<float>();
      }
      ASSERT_EQ(ours.size(), theirs.size());
      for (const auto& [expert, weight] : theirs) {
        ASSERT_TRUE(ours.count(expert)) << "token " << t << " expert " << expert;
        EXPECT_NEAR(ours[expert], weight, 1e-5);
      }
    }
  }
}

TEST(Sampler, GreedyAndFilters) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f};
  Sampler greedy({});
  EXPECT_EQ(greedy.sample(logits.data(), 4, {}), 1);
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  auto d = Sampler(p).distribution(logits.data(), 4, {});
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(d[3], 0.0f);
  EXPECT_NEAR(d[1], std::exp(1.0) / (std::exp(1.0) + 1.0), 1e-6);
  p.top_k = 0;
  p.top_p = 0.6f;  // p(1) = 0.644 alone reaches 0.6
  d = Sampler(p).distribution(logits.data(), 4, {});
  EXPECT_FLOAT_EQ(d[1], 1.0f);
  p.top_p = 1.0f;
  p.min_p = 0.3f;  // keeps tokens with p >= 0.3 * p_max: e^2, e^3 (e^1/e^3 = 0.135 is dropped)
  d = Sampler(p).distribution(logits.data(), 4, {});
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_GT(d[2], 0.0f);
  p.min_p = 0.0f;
  p.repetition_penalty = 2.0f;  // once per distinct token: 3 -> 1.5 (not 0.75)
  d = Sampler(p).distribution(logits.data(), 4, {1, 1, 1});
  double z = std::exp(1.0) + std::exp(1.5) + std::exp(2.0) + 1.0;
  EXPECT_NEAR(d[1], std::exp(1.5) / z, 1e-6);
  // OpenAI's penalties, by count: token 1 seen twice, token 2 once (temperature 1).
  p.repetition_penalty = 1.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  d = Sampler(p).distribution(logits.data(), 4, {1, 1, 2});
  z = std::exp(1.0) + std::exp(3.0 - 0.5 - 0.5) + std::exp(2.0 - 0.5 - 0.25) + 1.0;
  EXPECT_NEAR(d[1], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(d[2], std::exp(1.25) / z, 1e-6);
  p.presence_penalty = 3.0f;
  EXPECT_THROW(Sampler{p}, Error);
}

TEST(Sampler, DrawsFollowTheDistributionAndSeedsRepeat) {
  SamplingParams p;
  p.temperature = 0.7f;
  p.seed = 99;
  const std::vector<float> logits = {0.5f, 1.0f, 0.0f, 1.5f};
  Sampler a(p), b(p);
  const auto expected = a.distribution(logits.data(), 4, {});
  std::map<int, int> counts;
  constexpr int kDraws = 40000;
  for (int i = 0; i < kDraws; ++i) {
    const int t = a.sample(logits.data(), 4, {});
    EXPECT_EQ(t, b.sample(logits.data(), 4, {}));
    ++counts[t];
  }
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(double(counts[t]) / kDraws, expected[t], 0.01);
}

TEST(Sampler, DefaultsFromGenerationConfig) {
  const auto dir = testing_paths::temp_path("genconfig_sampling");
  std::filesystem::create_directories(dir);
  EXPECT_EQ(generation_defaults(dir).temperature, 0.0f);  // no file: greedy
  write_json_file(dir / "generation_config.json", {{"do_sample", true}, {"temperature", 0.7}, {"top_p", 0.8}});
  const SamplingParams p = generation_defaults(dir);
  EXPECT_FLOAT_EQ(p.temperature, 0.7f);
  EXPECT_FLOAT_EQ(p.top_p, 0.8f);
  EXPECT_EQ(p.top_k, 50);  // transformers' default when sampling
  write_json_file(dir / "generation_config.json", {{"do_sample", false}, {"temperature", 0.7}});
  EXPECT_EQ(generation_defaults(dir).temperature, 0.0f);
  std::filesystem::remove_all(dir);
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_ANY_THROW(Sampler{p});
  p = {};
  p.temperature = -1.0f;
  EXPECT_ANY_THROW(Sampler{p});
}

}  // namespace
