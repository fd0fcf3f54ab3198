#pragma once
// Next-token sampling, in Hugging Face's order: repetition penalty (then OpenAI's presence and
// frequency penalties), temperature, top-k, top-p, min-p, then a draw. Temperature 0 is greedy (argmax, ties to the lower id).
#include <cstdint>
#include <filesystem>
#include <random>
#include <vector>

namespace crossmoe {

struct SamplingParams {
  float temperature = 0.0f;
  int top_k = 0;                     // 0 = off
  float top_p = 1.0f;                // 1 = off
  float min_p = 0.0f;                // 0 = off
  float repetition_penalty = 1.0f;   // 1 = off
  // OpenAI's: logit -= presence * (count > 0) + frequency * count, counting the history.
  float presence_penalty = 0.0f;     // 0 = off
  float frequency_penalty = 0.0f;    // 0 = off
  uint64_t seed = 0;
};

// The sampling a model directory asks for in generation_config.json, as transformers reads it:
// do_sample false (or no file) is greedy; do_sample true takes temperature, top_k (default 50),
// top_p, min_p and repetition_penalty from the file.
SamplingParams generation_defaults(const std::filesystem::path& model_dir);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `history` holds the tokens seen so far (prompt and generated), for the repetition penalty.
  int sample(const float* logits, int vocab, const std::vector<int>& history);
  // The probabilities sample() draws from (after every filter), for tests.
  std::vector<float> distribution(const float* logits, int vocab, const std::vector<int>& history) const;

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace crossmoe
