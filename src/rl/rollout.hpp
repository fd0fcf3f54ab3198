#pragma once
// The rollout engine: the trainer's model (train/torch_model) generating for many sequences at
// once. Every sequence owns a row of one KV cache and only ever grows (a conversation: prompt,
// answer, next message, answer, ...); a call appends each request's new tokens (a ragged batch,
// prefilled together) and then decodes all of them in lock step, one token per sequence per step,
// until each stops or reaches its limit. Finished sequences leave the batch.
//
// Sampling, as MARS configures vLLM: temperature, then top-k, then top-p (the smallest set of
// most likely tokens whose probability reaches top_p), then a draw; temperature 0 is greedy.
// For every generated token the engine keeps the policy's log-probability (the model's own
// distribution, temperature 1), which the PPO ratio and the KL use.
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "games/chat_match.hpp"
#include "rl/decode_graphs.hpp"
#include "train/torch_model.hpp"

namespace crossmoe::rl {

// The request and answer types, and the interface play_matches drives, are games/chat_match's.
using games::Generation;
using games::GenerationRequest;
using games::SamplingOptions;

// Running totals, to see where rollout time goes: a decode step costs about the same whatever its
// row count, so rows per step (decode_rows / decode_steps) is the batching efficiency.
struct RolloutStats {
  int64_t prefill_tokens = 0, generated_tokens = 0;
  int64_t decode_steps = 0, decode_rows = 0;
  int64_t graph_steps = 0;  // decode steps through DecodeGraphs (replayed, on CUDA)
  double seconds = 0, prefill_seconds = 0;
};

class RolloutEngine : public games::TokenGenerator {
 public:
  // sequences: rows; capacity: tokens per row. The model is used, not copied: updated weights are
  // seen by the next call.
  RolloutEngine(const train::TorchModel& model, int sequences, int capacity, torch::ScalarType compute_dtype,
                int max_batch_tokens = 16384);

  // Empties every row.
  void reset() override;
  int sequences() const override { return int(tokens_.size()); }
  int capacity() const { return int(cache_.capacity) - 1; }  // the cache's last slot is DecodeGraphs' scratch
  const std::vector<int>& tokens(int sequence) const override { return tokens_.at(size_t(sequence)); }
  int free_space(int sequence) const override { return capacity() - int(tokens_.at(size_t(sequence)).size()); }

  // Appends and generates for each request (distinct sequences). Requests must fit: appended
  // tokens + max_new_tokens <= free_space.
  std::vector<Generation> generate(const std::vector<GenerationRequest>& requests, const std::vector<int>& stop_tokens,
                                   const SamplingOptions& sampling, std::mt19937_64& rng) override;

  const RolloutStats& stats() const { return stats_; }

  // How decode steps (one new token a row) run. Ragged: the batch is exactly the decoding rows,
  // through forward_cached, with MoE layers as set_decode_experts says. Bucketed: DecodeGraphs'
  // fixed-shape steps, replayed as CUDA graphs on a CUDA device (the default there; on the CPU they
  // run eagerly and the default is Ragged). Both give the same tokens.
  enum class DecodeSteps { Ragged, Bucketed };
  void set_decode_steps(DecodeSteps steps) { decode_steps_ = steps; }
  DecodeSteps decode_steps() const { return decode_steps_; }
  // Whether bucketed steps replay CUDA graphs (false on the CPU, or after a capture failed).
  bool replaying_graphs() const { return graphs_->replaying(); }

  // How MoE layers run their experts in ragged decode steps: the dispatch (GroupedExperts::Auto,
  // the default) or Dense (every expert on every row, no host sync). On an H200 self-play rolled
  // out at the same 1.4-1.9k tokens/s either way: ragged decode steps are bound by the host's
  // operator launches, not by the experts (docs/experiments.md).
  void set_decode_experts(train::GroupedExperts experts) { decode_experts_ = experts; }

 private:
  // Runs `tokens` (ragged) through the cache rows `rows`; returns the logits at each row's last
  // token [R, vocab]. The caller keeps tokens_ (the sequences) up to date.
  torch::Tensor append(const std::vector<int>& rows, const std::vector<std::vector<int>>& tokens);
  // One token for each row, as decode_steps_ says; the logits [rows, vocab].
  torch::Tensor decode(const std::vector<int>& rows, const std::vector<int>& tokens);

  const train::TorchModel& model_;
  torch::ScalarType compute_;
  int max_batch_tokens_;
  train::GroupedExperts decode_experts_;
  DecodeSteps decode_steps_;
  train::KvCache cache_;
  std::unique_ptr<DecodeGraphs> graphs_;  // holds cache_ by reference
  std::vector<std::vector<int>> tokens_;
  RolloutStats stats_;
};

// Draws one token from the top-k candidates of one row (logits sorted in descending order, with
// their ids), after temperature and top-p. Returns the index into the candidates.
int sample_candidate(const float* sorted_logits, int count, const SamplingOptions& sampling, std::mt19937_64& rng);

}  // namespace crossmoe::rl
