#pragma once
// The generation loop: prefill the prompt, then decode one token at a time until a stop token
// or the token limit, reporting each token as it comes.
#include <functional>
#include <vector>

#include "runtime/forward.hpp"
#include "runtime/sampler.hpp"

namespace crossmoe {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;   // time for generated tokens after the first
  double prefill_tokens_per_second() const { return prompt_tokens / std::max(prefill_seconds, 1e-9); }
  double decode_tokens_per_second() const {
    return generated_tokens > 1 ? (generated_tokens - 1) / std::max(decode_seconds, 1e-9) : 0.0;
  }
};

struct GenerationResult {
  std::vector<int> tokens;  // generated tokens, stop token included if one was hit
  GenerationStats stats;
};

// on_token returns false to stop early.
GenerationResult generate(InferenceSession& session, const std::vector<int>& prompt, int max_new_tokens,
                          Sampler& sampler, const std::vector<int>& stop_tokens,
                          const std::function<bool(int)>& on_token = {});

}  // namespace crossmoe
