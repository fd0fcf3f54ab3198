#pragma once
// Perplexity of a token sequence as llama.cpp's perplexity tool measures it (its default mode):
// the tokens are cut into chunks of `context` tokens (a partial last chunk is dropped), each chunk
// runs from an empty cache with its first token replaced by BOS when the tokenizer adds one, and
// only the second half of each chunk is scored: the logits at positions context/2 .. context-2
// predict the tokens at context/2 + 1 .. context-1, so every scored token has at least half a
// window of context. perplexity = exp(mean negative log-likelihood of the scored tokens).
#include <optional>
#include <vector>

#include "runtime/weights.hpp"

namespace crossmoe {

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  double perplexity_error = 0;  // one standard error, as llama.cpp prints it (+/-)
  int chunks = 0;
  int scored_tokens = 0;
};

// Needs at least 2 * context tokens (as llama.cpp does); context >= 4 and within the model's.
// max_chunks > 0 scores only the first max_chunks chunks (llama.cpp's --chunks).
PerplexityResult perplexity(const Model& model, const std::vector<int>& tokens, int context, std::optional<int> bos,
                            int max_chunks = 0);

}  // namespace crossmoe
