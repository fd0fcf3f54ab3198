#pragma once
// Router math for one token: scores -> top-K candidates and their weights.
//   softmax: p = softmax(s); top-K of p; w = p[top], renormalised if norm_topk_prob
//   sigmoid: p = sigmoid(s); top-K of p + bias (within the best topk_group of n_group groups,
//            a group scored by the sum of its best two); w = p[top], renormalised if
//            norm_topk_prob
//   then w *= routed_scaling_factor.
// Ties go to the lower candidate index.
#include <vector>

#include "model/config.hpp"

namespace crossmoe {

struct Route {
  std::vector<int> candidates;  // K candidate indices, best first
  std::vector<float> weights;   // K weights
};

// `logits` holds n router outputs; `bias` is null or n correction biases; `allowed` is null or
// n flags, candidates with flag 0 are never picked (progressive scaling routing masks).
void route_token(const MoeConfig& moe, const float* logits, int n, const float* bias, Route& out,
                 const unsigned char* allowed = nullptr);

}  // namespace crossmoe
