#pragma once
// Routed experts in a cache of fixed size (--memory-budget), read on demand from the
// safetensors files with direct I/O (O_DIRECT) into the cache's own page-aligned buffers, so
// that neither the page cache nor the process grows past the budget. Everything else of the
// model (attention, norms, routers, embeddings, shared experts) stays resident outside it.
//
// The cache holds whole experts (gate, up and down) in equal slots, keyed by the expert's
// owner: a Megrez2 pool shared by a group's layers, or a ReXMoE expert reused by its
// neighbours, is read once and serves every layer that routes to it. The forward pass acquires
// the experts of one MoE step (pinned until release_all), at most slots() at a time.
// prefetch() names experts the next MoE layer will (pre-gated) or may (speculative) use; a
// separate I/O thread reads them while the current layer computes.
#include <array>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "model/checkpoint.hpp"
#include "model/config.hpp"
#include "runtime/weights.hpp"

namespace crossmoe {

// --memory-budget: bytes (suffixes K, M, G, KiB, MiB, GiB, KB, MB, GB) or a percentage of the
// routed experts' bytes ("25%"). Throws UsageError naming the option for anything else, for
// zero and for percentages outside (0, 100].
struct MemoryBudget {
  uint64_t bytes = 0;
  double percent = 0;  // used when bytes == 0
  bool set() const { return bytes > 0 || percent > 0; }
};
MemoryBudget parse_memory_budget(const std::string& text);

// Which experts go out of the cache when a slot is needed.
//   lru:       the least recently used one.
//   frequency: the one used least often, with every count halved after as many uses as the
//              model has routed experts (old popularity fades); ties go to the older use.
enum class EvictionPolicy { Lru, Frequency };
EvictionPolicy parse_eviction_policy(const std::string& text);
std::string to_string(EvictionPolicy policy);

// What a policy knows about each expert key (0 .. keys-1), kept by the cache and by the trace
// simulator (runtime/cache_sim) alike, so both evict the same way.
class EvictionTracker {
 public:
  // decay_period: uses after which every frequency count is halved.
  EvictionTracker(EvictionPolicy policy, int keys, int64_t decay_period);
  void use(int key);
  // Whether `a` should leave the cache before `b`.
  bool evict_before(int a, int b) const;

 private:
  EvictionPolicy policy_;
  std::vector<uint64_t> last_use_;
  std::vector<uint32_t> frequency_;
  int64_t decay_period_, uses_since_decay_ = 0;
  uint64_t clock_ = 0;
};

struct ExpertCacheStats {
  int64_t hits = 0;       // acquire() found the expert in the cache (resident or being prefetched)
  int64_t misses = 0;     // acquire() had to read it
  int64_t bytes_read = 0;
  double stall_seconds = 0;    // time acquire() waited for reads (its own or a prefetch's)
  int64_t prefetch_reads = 0;  // experts read ahead by the I/O thread
  int64_t predicted = 0;       // experts used by a layer whose experts had been predicted ...
  int64_t predicted_right = 0;  // ... and of those, how many the prediction named
  double prefetch_accuracy() const { return predicted ? double(predicted_right) / double(predicted) : 0.0; }
  double hit_rate() const { return hits + misses ? double(hits) / double(hits + misses) : 0.0; }
  ExpertCacheStats& operator+=(const ExpertCacheStats& o);
  ExpertCacheStats operator-(const ExpertCacheStats& o) const;  // what happened between two readings
};

// How the budget maps onto the model: what `crossmoe info --memory-budget` prints and what
// the cache allocates.
struct ExpertCachePlan {
  int64_t experts = 0;           // routed experts stored (owned pools)
  uint64_t expert_bytes = 0;     // one expert's gate + up + down as stored
  uint64_t slot_bytes = 0;       // a slot: the expert plus the page-alignment room direct I/O needs
  uint64_t routed_bytes = 0;     // experts * expert_bytes
  uint64_t budget_bytes = 0;     // the budget resolved to bytes
  int64_t slots = 0;             // experts the budget holds, at most `experts`
  int min_slots = 0;             // one token's experts: top_k
};
// Throws (naming the budget and what one token needs) when the budget holds fewer than top_k
// experts, or the model has no routed experts.
ExpertCachePlan plan_expert_cache(const ModelConfig& config, const Checkpoint& checkpoint, const MemoryBudget& budget);

// The names of the routed experts' tensors: those left out of memory under a budget.
std::set<std::string> routed_expert_tensors(const ModelConfig& config);

struct ExpertCacheOptions {
  MemoryBudget budget;
  EvictionPolicy policy = EvictionPolicy::Lru;
  bool prefetch = true;
};

class ExpertCache {
 public:
  // `weights` holds the routed experts' shapes and dtypes (their data is not in memory).
  ExpertCache(const ModelConfig& config, const Checkpoint& checkpoint, const ModelWeights& weights,
              const ExpertCachePlan& plan, EvictionPolicy policy, bool prefetch);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // The expert's weights in the cache, read first if absent; pinned until release_all(). At
  // most slots() experts may be pinned at once. Throws an Error naming the file when a read
  // fails or comes up short (a file truncated under the running model).
  const SwiGluWeights& acquire(const ExpertRef& ref);
  // The experts of one batch, those in the cache pinned first, so that reading a missing one
  // never evicts another of the same batch. out[i] is refs[i]'s weights.
  void acquire(const std::vector<ExpertRef>& refs, std::vector<const SwiGluWeights*>& out);
  void release_all();
  // Starts reading these experts on the I/O thread (when prefetch is on), replacing what was
  // queued and not started; acquires until the next call count towards prefetch accuracy.
  // An empty list ends the prediction.
  void prefetch(const std::vector<ExpertRef>& refs);

  int64_t slots() const { return plan_.slots; }
  bool prefetching() const { return prefetch_; }
  bool direct_io() const { return direct_io_; }
  const ExpertCachePlan& plan() const { return plan_; }
  ExpertCacheStats stats() const;
  void reset_stats();

 private:
  enum class State { Empty, Loading, Ready };
  struct Slot {
    State state = State::Empty;
    int key = -1;
    int pins = 0;
    bool protected_prefetch = false;  // read ahead and not yet used: other prefetches leave it
    SwiGluWeights weights;
  };
  int key_of(const ExpertRef& ref) const { return ref.owner_layer * num_experts_ + ref.index; }
  // A slot to reuse (not pinned, not loading), chosen by the policy; -1 if none. Prefetches
  // pass for_prefetch and never take a slot holding an unused prefetch.
  int victim(bool for_prefetch);
  // Reads expert `key` into slot `s` (its buffers); the caller holds no lock.
  void read_expert(int key, Slot& s);
  void io_loop();

  const ModelConfig& config_;
  ExpertCachePlan plan_;
  bool prefetch_;
  bool direct_io_ = true;
  int num_experts_;
  struct Source {
    int fd;
    std::string label;
    uint64_t offset, bytes;
  };
  std::vector<int> fds_;                           // one per safetensors file
  std::vector<std::array<Source, 3>> sources_;     // per key: gate, up, down
  std::vector<SwiGluWeights> shapes_;              // per key (data null)
  std::array<uint64_t, 3> room_{};                 // bytes of a slot per projection
  void* memory_ = nullptr;
  std::vector<Slot> slots_;
  std::vector<int> slot_of_;                       // per key, -1 when absent
  EvictionTracker tracker_;
  std::vector<int> pinned_;
  std::vector<char> predicted_;                    // per key: named by the current prediction
  bool predicting_ = false;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int> queue_;                         // keys for the I/O thread
  bool stop_ = false;
  std::string io_error_;
  ExpertCacheStats stats_;
  std::thread io_thread_;
};

}  // namespace crossmoe
