#include "rl/decode_graphs.hpp"

#include <algorithm>
#include <cstdio>

#ifdef CROSSMOE_HAVE_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "util/error.hpp"
#include "util/round_up.hpp"

namespace crossmoe::rl {

struct DecodeGraphs::Graph {
#ifdef CROSSMOE_HAVE_CUDA
  at::cuda::CUDAGraph graph;
#endif
  // The graph's output [rows, vocab], rewritten by every replay. All graphs share one memory pool,
  // so another graph's replay may reuse this memory: it is read before the next replay.
  torch::Tensor logits;
};

namespace {

#ifdef CROSSMOE_HAVE_CUDA
// One memory pool for every graph's intermediate tensors: graphs replay one at a time on one stream.
std::pair<unsigned long long, unsigned long long> shared_pool() {
  static const auto pool = at::cuda::graph_pool_handle();
  return pool;
}
#endif

}  // namespace

DecodeGraphs::DecodeGraphs(const train::TorchModel& model, train::KvCache& cache, torch::ScalarType compute_dtype)
    : model_(model), cache_(cache), replaying_(false) {
  require(cache.capacity >= 2 && !cache.lengths.empty(), "decode graphs: the cache needs a scratch slot");
  options_.compute_dtype = compute_dtype;
  options_.grouped_experts = train::GroupedExperts::Dense;
  const int64_t rows = int64_t(cache.lengths.size()), half = model.config().head_dim / 2;
  const auto on_device = torch::TensorOptions().device(model.device());
  const torch::ScalarType acc = compute_dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  tokens_ = torch::zeros({rows, 1}, on_device.dtype(torch::kInt64));
  rows_ = torch::zeros({rows}, on_device.dtype(torch::kInt64));
  positions_ = torch::zeros({rows}, on_device.dtype(torch::kInt64));
  cos_ = torch::zeros({rows, 1, 1, half}, on_device.dtype(acc));
  sin_ = torch::zeros({rows, 1, 1, half}, on_device.dtype(acc));
#ifdef CROSSMOE_HAVE_CUDA
  replaying_ = model.device().is_cuda();
#endif
}

DecodeGraphs::~DecodeGraphs() = default;

torch::Tensor DecodeGraphs::run_eagerly(int64_t rows, int64_t keys) const {
  return model_.decode_rows(tokens_.narrow(0, 0, rows), rows_.narrow(0, 0, rows), positions_.narrow(0, 0, rows),
                            cos_.narrow(0, 0, rows), sin_.narrow(0, 0, rows), keys, cache_, options_);
}

torch::Tensor DecodeGraphs::step(const std::vector<int>& rows, const std::vector<int>& tokens) {
  require(rows.size() == tokens.size() && !rows.empty(), "decode graphs: one token per row");
  const int64_t all_rows = int64_t(cache_.lengths.size()), scratch = cache_.capacity - 1;
  int64_t keys = 0;
  for (const int row : rows) {
    require(row >= 0 && row < all_rows && cache_.lengths[size_t(row)] < scratch,
            "decode graphs: row " + std::to_string(row) + " is not in the cache or has no room");
    keys = std::max(keys, cache_.lengths[size_t(row)] + 1);
  }
  require(int64_t(rows.size()) <= all_rows, "decode graphs: more rows than the cache has");
  const int64_t R = std::min(round_up(int64_t(rows.size()), kRowBucket), all_rows);
  keys = std::min(round_up(keys, kKeyBucket), cache_.capacity);

  // This step's inputs; padding rows write to row 0's scratch slot.
  std::vector<int64_t> host_tokens(size_t(R), 0), host_rows(size_t(R), 0), host_positions(size_t(R), scratch);
  for (size_t i = 0; i < rows.size(); ++i) {
    host_tokens[i] = tokens[i];
    host_rows[i] = rows[i];
    host_positions[i] = cache_.lengths[size_t(rows[i])];
  }
  const auto [cos, sin] = model_.decode_rope(host_positions);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  tokens_.narrow(0, 0, R).copy_(torch::from_blob(host_tokens.data(), {R, 1}, i64));
  rows_.narrow(0, 0, R).copy_(torch::from_blob(host_rows.data(), {R}, i64));
  positions_.narrow(0, 0, R).copy_(torch::from_blob(host_positions.data(), {R}, i64));
  cos_.narrow(0, 0, R).copy_(cos);
  sin_.narrow(0, 0, R).copy_(sin);

  torch::Tensor logits;
#ifdef CROSSMOE_HAVE_CUDA
  if (replaying_) {
    std::unique_ptr<Graph>& g = graphs_[{R, keys}];
    if (!g) {
      g = std::make_unique<Graph>();
      // Capture on a side stream (the default stream cannot be captured), after a warm-up there
      // that sets up cuBLAS and the allocator. Both runs write this step's keys and values, which
      // the replay then writes again: the same values.
      torch::cuda::synchronize();
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
      bool capturing = false;
      try {
        const c10::cuda::CUDAStreamGuard guard(side);
        run_eagerly(R, keys);
        side.synchronize();
        g->graph.capture_begin(shared_pool());
        capturing = true;
        g->logits = run_eagerly(R, keys);
        capturing = false;
        g->graph.capture_end();
      } catch (const std::exception& e) {
        // An operator that waits for the host cannot be captured: say so once and decode eagerly.
        std::fprintf(stderr, "rollout: CUDA graphs off, decoding eagerly (capture failed: %s)\n", e.what());
        if (capturing) {
          try {
            g->graph.capture_end();  // ends the stream's capture; reports the invalidated graph
          } catch (const std::exception&) {
          }
        }
        replaying_ = false;
      }
      torch::cuda::synchronize();
    }
    if (replaying_) {
      g->graph.replay();
      logits = g->logits;
    } else {
      graphs_.clear();
    }
  }
#endif
  if (!logits.defined()) logits = run_eagerly(R, keys);
  for (const int row : rows) ++cache_.lengths[size_t(row)];
  return logits.narrow(0, 0, int64_t(rows.size()));
}

}  // namespace crossmoe::rl
