#pragma once
// Trace-driven comparison of eviction policies: the expert accesses of a routing trace
// (`generate --trace`) replayed against caches of given sizes, under the expert cache's own
// policies (the same EvictionTracker) and under Belady's rule (evict the expert whose next use
// lies farthest ahead), the offline optimum of demand paging and so the bound for any policy.
// As in the cache, the experts of one step (one token in one layer) are held together: none of
// them is evicted to make room for another of the same step, and those already in the cache are
// used first.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include "runtime/expert_cache.hpp"

namespace crossmoe {

struct RoutingTrace {
  std::vector<std::vector<int>> steps;  // expert keys (0 .. experts-1) used together
  std::vector<int> layer, position;     // per step: the layer that routed, the token's position
  int experts = 0;                      // distinct experts in the trace
  int64_t accesses = 0;
  size_t widest_step = 0;
  // For the next-use policy: the layers seen routing to each key (layers: the highest layer + 1).
  KeyLayers key_layers() const;
};

// Reads `generate --trace` JSON lines; experts are keyed by (owner layer, index). Errors name the
// file and line.
RoutingTrace read_routing_trace(const std::filesystem::path& path);

struct SimulatedCache {
  int64_t hits = 0, misses = 0;
  double hit_rate() const { return hits + misses ? double(hits) / double(hits + misses) : 0.0; }
};

struct SimulateOptions {
  // The policy is told the next step's experts when that step is the next layer of the same
  // token (a pre-gated model names them one layer ahead; the cache's prefetch does the same).
  bool next_step_known = false;
  // Hits and misses are counted from the first step at this position on; the steps before it
  // only fill the cache (a long prompt, then the decode that is measured).
  int from_position = 0;
};

// policy: one of the cache's, or nullopt for Belady's rule. slots must hold the widest step.
// Frequency counts halve after as many uses as the trace has distinct experts.
SimulatedCache simulate_cache(const RoutingTrace& trace, int slots, std::optional<EvictionPolicy> policy,
                              const SimulateOptions& options = {});

}  // namespace crossmoe
