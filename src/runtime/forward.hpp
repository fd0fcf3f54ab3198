#pragma once
// The forward pass over the model description: batched prefill (in chunks, so memory stays
// bounded) and single-token decode share one code path; a KV cache holds past keys and values.
//
// Per layer, for a chunk of T tokens:
//   xn = RMSNorm(x); q, k, v = xn Wq, xn Wk, xn Wv (+ q/k norm, RoPE); x += Attn(q, K, V) Wo
//   u = RMSNorm(x); x += FFN_l(u)
// An MoE FFN routes each token (its router reads u, or u of the previous layer when pre-gated),
// then runs every chosen expert once on all the tokens that chose it.
#include <cstdint>
#include <vector>

#include "model/rope.hpp"
#include "runtime/routing.hpp"
#include "runtime/weights.hpp"

namespace crossmoe {

// Which experts each MoE layer chose, per token.
struct RoutingRecord {
  int position;
  int layer;
  std::vector<ExpertRef> experts;
  std::vector<float> weights;
};

class InferenceSession {
 public:
  // context_length: KV cache size in tokens; chunk: tokens per prefill step.
  InferenceSession(const Model& model, int context_length, int chunk = 128);

  // Appends tokens to the sequence. Returns logits, [1, vocab] for the last token or
  // [n, vocab] for every token when all_logits.
  const std::vector<float>& forward(const std::vector<int>& tokens, bool all_logits = false);

  void reset() { position_ = 0; }
  // Forgets the tokens from `position` on; the cache keeps those before it.
  void rewind(int position);
  int position() const { return position_; }
  int context_length() const { return context_; }
  const Model& model() const { return model_; }
  // When set, every routing decision is appended here.
  void set_trace(std::vector<RoutingRecord>* trace) { trace_ = trace; }

 private:
  void run_chunk(const int* tokens, int T, bool all_logits, float* logits);
  void attention(int layer, int T);
  // One SwiGLU FFN applied to `tokens` rows of `in`, written to `out`.
  struct SwiGluRun {
    const SwiGluWeights* weights;
    const float* in;
    int tokens;
    float* out;
  };
  // Runs several FFNs with one parallel region per projection stage.
  void swiglu(const std::vector<SwiGluRun>& runs);
  void moe(int layer, const float* router_in, int T);

  const Model& model_;
  const ModelConfig& c_;
  int context_;
  int chunk_;
  int position_ = 0;
  RopeTable rope_;
  std::vector<float> k_cache_;  // [layer][kv head][position][head_dim]
  std::vector<float> v_cache_;  // [layer][kv head][head_dim][position]: transposed for P V
  // Scratch for one chunk.
  std::vector<float> x_, xn_, q_, k_, v_, att_, u_, u_prev_, ffn_, tmp_, h1_, h2_, rows_in_, rows_out_, router_;
  std::vector<float> logits_;
  std::vector<RoutingRecord>* trace_ = nullptr;
};

}  // namespace crossmoe
