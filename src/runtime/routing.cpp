#include "runtime/routing.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace crossmoe {

void route_token(const MoeConfig& moe, const float* logits, int n, const float* bias, Route& out,
                 const unsigned char* allowed) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<float> prob(logits, logits + n);
  if (moe.scoring == Scoring::Softmax) {
    const float m = *std::max_element(prob.begin(), prob.end());
    float sum = 0.0f;
    for (float& p : prob) sum += (p = std::exp(p - m));
    for (float& p : prob) p /= sum;
  } else {
    for (float& p : prob) p = 1.0f / (1.0f + std::exp(-p));
  }
  std::vector<float> choice(prob);
  if (bias)
    for (int i = 0; i < n; ++i) choice[i] += bias[i];
  if (allowed)
    for (int i = 0; i < n; ++i)
      if (!allowed[i]) choice[i] = kNegInf;
  if (moe.n_group > 1) {
    const int per = n / moe.n_group;
    std::vector<float> group_score(moe.n_group);
    for (int g = 0; g < moe.n_group; ++g) {
      std::vector<float> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      // A group scores as the sum of its best two biased scores with a correction bias
      // (DeepSeek-V3's noaux_tc), as its best expert without one (DeepSeek-V2's
      // group_limited_greedy), as Megrez2's and DeepSeek's published code route.
      const int best = bias ? std::min(2, per) : 1;
      std::partial_sort(members.begin(), members.begin() + best, members.end(), std::greater<>());
      group_score[g] = std::accumulate(members.begin(), members.begin() + best, 0.0f);
    }
    std::vector<int> order(moe.n_group);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return group_score[a] > group_score[b]; });
    for (int r = moe.topk_group; r < moe.n_group; ++r)
      std::fill(choice.begin() + order[r] * per, choice.begin() + (order[r] + 1) * per, kNegInf);
  }
  std::vector<int> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  const int k = moe.top_k;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
  });
  out.candidates.assign(idx.begin(), idx.begin() + k);
  out.weights.resize(k);
  float sum = 0.0f;
  for (int i = 0; i < k; ++i) sum += (out.weights[i] = prob[out.candidates[i]]);
  const float scale = float(moe.routed_scaling_factor) / (moe.norm_topk_prob ? sum + 1e-20f : 1.0f);
  for (float& w : out.weights) w *= scale;
}

}  // namespace crossmoe
