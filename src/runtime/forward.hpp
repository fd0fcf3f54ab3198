#pragma once
// The forward pass over the model description. One step runs the new tokens of any number of
// sequences together: every matmul takes all their tokens as rows (one pass over the weights),
// and an MoE layer groups the tokens of all sequences by the expert they chose. Prefill of a
// long prompt goes in chunks of bounded size, so memory stays bounded, and can share a step
// with the decode of other sequences. Each sequence's keys and values live in blocks of a
// shared KvPool.
//
// Per layer, for a step of T tokens:
//   xn = RMSNorm(x); q, k, v = xn Wq, xn Wk, xn Wv (+ q/k norm, RoPE); x += Attn(q, K, V) Wo
//   (latent attention: q, k, v expanded from low-rank latents of xn; see LatentAttention)
//   u = RMSNorm(x); x += FFN_l(u)
// Attention reads each token's own sequence only. An MoE FFN routes each token (its router
// reads u, or u of the previous layer when pre-gated), then runs every chosen expert once on
// all the tokens that chose it.
#include <cstdint>
#include <utility>
#include <vector>

#include "model/rope.hpp"
#include "runtime/kv_pool.hpp"
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

// One sequence's share of a step: `count` tokens appended to it. logits: null for none, else
// [1, vocab] for the last token, or [count, vocab] for every token when all_logits.
struct StepPiece {
  int sequence;
  const int* tokens;
  int count;
  float* logits = nullptr;
  bool all_logits = false;
};

class BatchSession {
 public:
  // KV cache of `blocks` blocks of `block_size` tokens; a step runs at most `chunk` tokens.
  BatchSession(const Model& model, int block_size, int blocks, int chunk = 128);

  // Sequences: opened empty, closed to give their blocks back (shared ones stay cached).
  int open();
  void close(int sequence);
  int length(int sequence) const { return int(seq(sequence).tokens.size()); }
  const std::vector<int>& tokens(int sequence) const { return seq(sequence).tokens; }

  // For an empty sequence: takes the cached blocks that hold the longest prefix of `prompt` in
  // whole blocks, leaving at least one token to run (the next logits come from it). Returns the
  // number of tokens reused.
  int reuse_prefix(int sequence, const std::vector<int>& prompt);
  // Blocks the pool must hand out before `count` more tokens fit the sequence.
  int blocks_needed(int sequence, int count) const;
  // Takes those blocks; false, taking none, when the pool has too few.
  bool reserve(int sequence, int count);
  // Forgets the sequence's tokens from `length` on.
  void rewind(int sequence, int length);

  // Runs the pieces (distinct sequences, at most chunk() tokens in all) as one forward step.
  // Blocks are reserved as needed; throws if the pool runs out.
  void step(const std::vector<StepPiece>& pieces);

  int chunk() const { return chunk_; }
  const KvPool& pool() const { return pool_; }
  const Model& model() const { return model_; }
  // When set, every routing decision is appended here.
  void set_trace(std::vector<RoutingRecord>* trace) { trace_ = trace; }

 private:
  struct Sequence {
    bool open = false;
    std::vector<int> blocks;
    std::vector<int> tokens;  // those whose keys and values the cache holds
  };
  const Sequence& seq(int id) const;
  Sequence& seq(int id) { return const_cast<Sequence&>(std::as_const(*this).seq(id)); }
  void attention(int layer, const std::vector<StepPiece>& pieces, const std::vector<int>& starts);
  // Latent attention (LatentAttention) over its latent cache: q_ per head [k_up q_nope | q_rope],
  // k_ [c | k_rope] per token, its c the value too (RoPE comes after); then each head's output (c's
  // weighted sum) expanded by v_up into latent_out_, o's input.
  void latent_qkv(int layer, int T);
  void latent_output(int layer, int T);
  // Head h of each of T tokens (the first `in` floats of its head_width-wide slice of `rows`,
  // heads side by side) through weights[h], all heads in one matmul_batch: head h's outputs for
  // token t at per_head_out_[(h * T + t) * weights[h].rows].
  void through_heads(const std::vector<kernels::Matrix>& weights, const float* rows, int head_width, int in, int T);
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
  // Under a memory budget with prefetch: the experts the next layer will choose (its router on
  // this layer's FFN input: exact when pre-gated, a guess otherwise); none after the last MoE
  // layer of a token.
  std::vector<ExpertRef> predict_next(int layer, int T);

  const Model& model_;
  const ModelConfig& c_;
  int chunk_;
  RopeTable rope_;
  KvPool pool_;
  std::vector<Sequence> sequences_;
  std::vector<int> row_position_;  // position in its sequence of each token of the step
  // Scratch for one step.
  std::vector<float> x_, xn_, q_, k_, v_, att_, u_, u_prev_, ffn_, tmp_, h1_, h2_, rows_in_, rows_out_, router_,
      predicted_router_, logits_;
  std::vector<float> q_latent_, q_heads_, kv_latent_, per_head_in_, per_head_out_, latent_out_;  // latent attention
  std::vector<RoutingRecord>* trace_ = nullptr;
};

// One sequence with a cache of `context_length` tokens in one block: the single-stream case
// (generate, chat, eval) of the batched session.
class InferenceSession {
 public:
  // context_length: KV cache size in tokens; chunk: tokens per prefill step.
  InferenceSession(const Model& model, int context_length, int chunk = 128);

  // Appends tokens to the sequence. Returns logits, [1, vocab] for the last token or
  // [n, vocab] for every token when all_logits.
  const std::vector<float>& forward(const std::vector<int>& tokens, bool all_logits = false);

  void reset() { rewind(0); }
  // Forgets the tokens from `position` on; the cache keeps those before it.
  void rewind(int position);
  int position() const { return batch_.length(sequence_); }
  int context_length() const { return context_; }
  const Model& model() const { return batch_.model(); }
  void set_trace(std::vector<RoutingRecord>* trace) { batch_.set_trace(trace); }

 private:
  BatchSession batch_;
  int sequence_;
  int context_;
  std::vector<float> logits_;
};

}  // namespace crossmoe
