#include "runtime/generate.hpp"

#include <algorithm>

#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe {

GenerationResult generate(InferenceSession& session, const std::vector<int>& prompt, int max_new_tokens,
                          Sampler& sampler, const std::vector<int>& stop_tokens,
                          const std::function<bool(int)>& on_token) {
  require(!prompt.empty(), "the prompt is empty");
  const int vocab = session.model().config().vocab_size;
  const int room = session.context_length() - session.position();
  require(int(prompt.size()) <= room, "the prompt has " + std::to_string(prompt.size()) +
                                          " tokens but the context holds " + std::to_string(room));
  max_new_tokens = std::min(max_new_tokens, room - int(prompt.size()) + 1);
  GenerationResult result;
  result.stats.prompt_tokens = static_cast<int>(prompt.size());
  std::vector<int> history = prompt;

  Stopwatch prefill;
  const std::vector<float>* logits = &session.forward(prompt);
  result.stats.prefill_seconds = prefill.seconds();
  Stopwatch decode;
  for (int i = 0; i < max_new_tokens; ++i) {
    const int token = sampler.sample(logits->data(), vocab, history);
    result.tokens.push_back(token);
    history.push_back(token);
    if (i == 0) decode = Stopwatch();  // decode speed counts the steps after the first token
    const bool keep_going = !on_token || on_token(token);
    if (!keep_going || std::find(stop_tokens.begin(), stop_tokens.end(), token) != stop_tokens.end()) break;
    if (i + 1 < max_new_tokens) logits = &session.forward({token});
  }
  result.stats.generated_tokens = static_cast<int>(result.tokens.size());
  result.stats.decode_seconds = decode.seconds();
  return result;
}

std::vector<int> ConversationCache::rewind_to(const std::vector<int>& prompt) {
  require(!prompt.empty(), "the prompt is empty");
  size_t shared = 0;
  while (shared < held_.size() && shared + 1 < prompt.size() && held_[shared] == prompt[shared]) ++shared;
  held_.resize(shared);
  session_.rewind(int(shared));
  reused_ = int(shared);
  return std::vector<int>(prompt.begin() + std::ptrdiff_t(shared), prompt.end());
}

void ConversationCache::record(const std::vector<int>& suffix, const GenerationResult& result) {
  held_.insert(held_.end(), suffix.begin(), suffix.end());
  if (!result.tokens.empty()) held_.insert(held_.end(), result.tokens.begin(), result.tokens.end() - 1);
  require(int(held_.size()) == session_.position(), "the conversation cache lost track of the session");
}

void ConversationCache::clear() {
  held_.clear();
  session_.reset();
  reused_ = 0;
}

}  // namespace crossmoe
