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

// on_token returns false to stop early. The prompt is appended to what the session holds.
GenerationResult generate(InferenceSession& session, const std::vector<int>& prompt, int max_new_tokens,
                          Sampler& sampler, const std::vector<int>& stop_tokens,
                          const std::function<bool(int)>& on_token = {});

// The tokens whose keys and values a session holds, kept across the turns of a conversation so
// that each turn prefills only what differs from them. Templates may rewrite earlier turns (Qwen3
// drops old reasoning) and a reply may encode differently from how it was generated, so what is
// kept is the longest shared prefix, not the previous prompt.
class ConversationCache {
 public:
  explicit ConversationCache(InferenceSession& session) : session_(session) {}
  // Rewinds the session to the longest prefix of `prompt` it holds, leaving at least one token
  // to run (the next logits come from it), and returns the tokens still to prefill.
  std::vector<int> rewind_to(const std::vector<int>& prompt);
  // Records what generate() ran after rewind_to: the suffix, then every generated token but the last.
  void record(const std::vector<int>& suffix, const GenerationResult& result);
  void clear();
  int reused() const { return reused_; }  // tokens the last rewind_to kept

 private:
  InferenceSession& session_;
  std::vector<int> held_;
  int reused_ = 0;
};

}  // namespace crossmoe
