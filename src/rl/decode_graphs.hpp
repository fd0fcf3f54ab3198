#pragma once
// Decode steps of the rollout engine as CUDA graphs. A decode step of a small model is a thousand
// tiny kernels whose launches, not their arithmetic, take the time (on an H200, about 20 ms of host
// time a step against well under a millisecond of GPU work). A CUDA graph records the launches of
// one step once and replays them with a single call.
//
// A graph fixes its shapes and addresses, so steps run in buckets: R batch rows (the decoding rows'
// count rounded up to a multiple of kRowBucket) over the keys 0..L-1 (the longest row's, rounded up
// to a multiple of kKeyBucket), from input buffers that each step overwrites. Padding rows write to
// cache row 0's scratch slot (its last, which no live row reads) and their logits are dropped. MoE
// layers run every expert on every row (GroupedExperts::Dense): the dispatch needs the per-expert
// counts on the host, which a graph cannot wait for.
//
// Without CUDA (a CPU model, or a build without the CUDA headers) the same bucketed steps run
// eagerly: that is how the tests check them against the engine's ragged decode.
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "train/torch_model.hpp"

namespace crossmoe::rl {

class DecodeGraphs {
 public:
  static constexpr int64_t kRowBucket = 32, kKeyBucket = 256;

  // The cache must keep its tensors (graphs hold their addresses) and have a scratch slot: rows
  // decode at positions below cache.capacity - 1.
  DecodeGraphs(const train::TorchModel& model, train::KvCache& cache, torch::ScalarType compute_dtype);
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // Appends tokens[i] to cache row rows[i] (distinct rows) and returns the logits [rows, vocab] in
  // that order. Advances cache.lengths.
  torch::Tensor step(const std::vector<int>& rows, const std::vector<int>& tokens);

  // Whether steps replay graphs (CUDA) or run eagerly.
  bool replaying() const { return replaying_; }

 private:
  struct Graph;
  torch::Tensor run_eagerly(int64_t rows, int64_t keys) const;

  const train::TorchModel& model_;
  train::KvCache& cache_;
  train::ForwardOptions options_;
  bool replaying_;
  // Inputs for up to all cache rows; a bucket of R rows uses the first R.
  torch::Tensor tokens_, rows_, positions_, cos_, sin_;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Graph>> graphs_;  // by (rows, keys)
};

}  // namespace crossmoe::rl
