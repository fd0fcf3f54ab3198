#include "runtime/perplexity.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "runtime/forward.hpp"
#include "util/error.hpp"

namespace crossmoe {

PerplexityResult perplexity(const Model& model, const std::vector<int>& tokens, int context, std::optional<int> bos,
                            int max_chunks) {
  require(context >= 4, "the context must be at least 4 tokens");
  require(context <= model.config().max_position_embeddings,
          "a context of " + std::to_string(context) + " tokens exceeds the model's " +
              std::to_string(model.config().max_position_embeddings) + " (max_position_embeddings)");
  require(tokens.size() >= 2 * size_t(context), "perplexity with a context of " + std::to_string(context) +
                                                    " needs at least " + std::to_string(2 * context) +
                                                    " tokens; the text has " + std::to_string(tokens.size()));
  const int vocab = model.config().vocab_size;
  int chunks = int(tokens.size() / size_t(context));
  if (max_chunks > 0) chunks = std::min(chunks, max_chunks);
  const int first = context / 2;
  InferenceSession session(model, context);
  double nll = 0, nll_squared = 0;
  int count = 0;
  for (int c = 0; c < chunks; ++c) {
    std::vector<int> chunk(tokens.begin() + size_t(c) * context, tokens.begin() + size_t(c + 1) * context);
    if (bos) chunk[0] = *bos;
    session.reset();
    const std::vector<float>& logits = session.forward(chunk, true);
    for (int j = first; j < context - 1; ++j) {
      const float* row = logits.data() + size_t(j) * vocab;
      const float max = *std::max_element(row, row + vocab);
      double sum = 0;
      for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - max);
      const double loss = std::log(sum) - (double(row[chunk[j + 1]]) - max);
      nll += loss;
      nll_squared += loss * loss;
      ++count;
    }
  }
  PerplexityResult r;
  r.chunks = chunks;
  r.scored_tokens = count;
  r.mean_nll = nll / count;
  r.perplexity = std::exp(r.mean_nll);
  const double variance = nll_squared / count - r.mean_nll * r.mean_nll;
  r.perplexity_error = variance > 0 && count > 1 ? std::sqrt(variance / (count - 1)) * r.perplexity : 0.0;
  return r;
}

}  // namespace crossmoe
