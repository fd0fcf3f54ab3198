#pragma once
// Routed experts in a cache of fixed size (--memory-budget), read on demand from the
// safetensors files with direct I/O (O_DIRECT) into the cache's own page-aligned buffers, so
// that neither the page cache nor the process grows past the budget. Everything else of the
// model (attention, norms, routers, embeddings, shared experts) stays resident outside it.
//
// The cache holds whole experts (gate, up and down) in equal slots, keyed by the expert's
// owner: a Megrez2 pool shared by a group's layers, or a ReXMoE expert reused by its
// neighbours, is read once and serves every layer that routes to it. The forward pass acquires
// the experts of one MoE step (pinned until release_all), at most slots() at a time, and names
// the experts the next MoE layer will (pre-gated) or may (speculative) use; those are read while
// the current layer computes, and nothing evicts them meanwhile.
//
// Reads go through a pool of I/O threads, each with one pread in flight, so that the disk sees
// up to io_depth requests at once: a single stream leaves an NVMe drive at a fraction of what it
// delivers at queue depth 8-32. Each expert is split into chunks of io_chunk_bytes, so that even
// one expert is read by several requests; all of a step's misses and the next layer's prefetch
// are queued together, misses first. (A thread per request rather than io_uring: no library or
// kernel setting to depend on, and containers whose seccomp profile refuses io_uring still run.)
#include <array>
#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/checkpoint.hpp"
#include "model/config.hpp"
#include "runtime/weights.hpp"
#include "util/anonymous_memory.hpp"

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
//   next-use:  the one whose next use is expected farthest ahead, an estimate of Belady's rule
//              from what the cache knows: which layers can route to each expert (a Megrez2 pool
//              serves its group's layers, so between groups it waits a known number of layers)
//              and how often each was chosen when one of those layers ran (counts fading as for
//              frequency, four times slower). Experts the next layer is known to use
//              (pre-gated, named ahead) are due at once; ties go to the older use.
enum class EvictionPolicy { Lru, Frequency, NextUse };
EvictionPolicy parse_eviction_policy(const std::string& text);
std::string to_string(EvictionPolicy policy);

// What next-use needs to know of the model: the layers (0 .. layers-1, in the order a token runs
// them, the cycle repeating token after token) that can route to each key, and how often an
// expert is chosen on average when it can be (top_k / candidates), the estimate for an expert
// before it has been seen.
struct KeyLayers {
  int layers = 0;
  std::vector<std::vector<int>> of_key;
  double prior_rate = 0;
};

// What a policy knows about each expert key (0 .. keys-1), kept by the cache and by the trace
// simulator (runtime/cache_sim) alike, so both evict the same way.
class EvictionTracker {
 public:
  // decay_period: uses after which every frequency count is halved. key_layers: for next-use.
  EvictionTracker(EvictionPolicy policy, int keys, int64_t decay_period, KeyLayers key_layers = {});
  // A step of `layer` begins (for next-use: where in the cycle the cache is, and one more
  // chance for each expert that layer can route to).
  void begin_step(int layer);
  void use(int key);
  // The keys the next step will use, known ahead (pre-gated); empty when unknown.
  void expect_next(const std::vector<int>& keys);
  // Whether `a` should leave the cache before `b`.
  bool evict_before(int a, int b) const;
  // next-use's estimate of how many layer steps from now `key` is used again.
  double expected_distance(int key) const;

 private:
  EvictionPolicy policy_;
  std::vector<uint64_t> last_use_;
  std::vector<uint32_t> frequency_;
  int64_t decay_period_, uses_since_decay_ = 0, uses_since_rate_decay_ = 0;
  uint64_t clock_ = 0;
  KeyLayers key_layers_;
  std::vector<double> chosen_;       // next-use: fading counts of uses ...
  std::vector<double> layer_steps_;  // ... and of each layer's steps
  int layer_ = 0;
  std::vector<char> next_;           // per key: named for the next step
  std::vector<int> next_keys_;
};

struct ExpertCacheStats {
  int64_t hits = 0;       // acquire() found the expert in the cache (resident or being prefetched)
  int64_t misses = 0;     // acquire() had to read it
  int64_t bytes_read = 0;
  double stall_seconds = 0;    // time acquire() waited for reads (its own or a prefetch's) ...
  double stall_ahead_seconds = 0;  // ... of which waiting for reads ahead that had not arrived yet
  double io_busy_seconds = 0;  // time with at least one read in flight: what overlap can hide
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
  uint64_t expert_bytes = 0;     // the largest expert's gate + up + down as stored (all of them, most often)
  uint64_t slot_bytes = 0;       // a slot: that expert plus the page-alignment room direct I/O needs
  uint64_t routed_bytes = 0;     // all routed experts' bytes
  uint64_t budget_bytes = 0;     // the budget resolved to bytes
  int64_t slots = 0;             // experts the budget holds, at most `experts`
  int min_slots = 0;             // one token's experts: top_k
};
// Throws (naming the budget and what one token needs) when the budget holds fewer than top_k
// experts, or the model has no routed experts.
ExpertCachePlan plan_expert_cache(const ModelConfig& config, const Checkpoint& checkpoint, const MemoryBudget& budget);

struct ExpertCacheOptions {
  MemoryBudget budget;
  EvictionPolicy policy = EvictionPolicy::NextUse;
  bool prefetch = true;
  int io_depth = 16;                  // reads in flight at most (I/O threads)
  uint64_t io_chunk_bytes = 1 << 20;  // one read request at most (rounded up to whole pages)
};

// What a direct-I/O read probe over the experts' bytes measured (ExpertCache::probe_reads).
struct ReadProbe {
  int depth = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  double bytes_per_second() const { return seconds > 0 ? double(bytes) / seconds : 0.0; }
};

class ExpertCache {
 public:
  // `weights` holds the routed experts' shapes and dtypes (their data is not in memory).
  ExpertCache(const ModelConfig& config, const Checkpoint& checkpoint, const ModelWeights& weights,
              const ExpertCachePlan& plan, const ExpertCacheOptions& options);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  // The expert's weights in the cache, read first if absent; pinned until release_all(). At
  // most slots() experts may be pinned at once. Throws an Error naming the file when a read
  // fails or comes up short (a file truncated under the running model).
  const SwiGluWeights& acquire(const ExpertRef& ref);
  // The experts of one step, those in the cache pinned first, so that reading a missing one
  // never evicts another of the same step; the misses are read together. out[i] is refs[i]'s
  // weights. On a failed read nothing of this call stays pinned.
  // layer >= 0 begins a step of that layer: its experts count towards the accuracy of the
  // standing prediction, and `next` (null or empty: none) becomes the prediction, the experts
  // the next MoE layer will (pre-gated) or may (speculative) use. It is set before this step's
  // misses take their slots, so that neither they nor reads ahead evict what the next layer
  // needs; with prefetch on, the predicted experts not in the cache are read right behind this
  // step's misses, while it computes. layer < 0: a further turn of the step begun last (a
  // prefill chunk that chose more experts than the cache holds).
  // Pins belong to the calling thread: another thread's acquire waits for its release_all, so
  // sessions on several threads share the cache one step at a time.
  void acquire(const std::vector<ExpertRef>& refs, std::vector<const SwiGluWeights*>& out, int layer = -1,
               const std::vector<ExpertRef>* next = nullptr);
  void release_all();
  // Names the experts the next MoE step will (pre-gated) or may (speculative) use before this
  // layer's own step: a dense layer ahead of the first MoE layer, whose router input is known
  // after the dense layer's attention. With prefetch on they are read while the dense layer's
  // FFN computes; the next acquire(.., layer >= 0, ..) counts its accuracy and replaces it.
  void expect(const std::vector<ExpertRef>& next);
  // With CROSSMOE_IO_TRACE=FILE set, a line of text per event: milliseconds since the cache was
  // made, then the event (acquire, ready, release, load, loaded, expect, busy, idle, or `note`).
  // scripts/io_timeline.py turns it into a timeline of overlap. note() marks a point (bench:
  // where the timed decode begins and ends).
  void note(const std::string& what);

  // Reads `bytes` of the experts' stored bytes (those after the first `skip` bytes, wrapping
  // around) with `depth` requests of io_chunk_bytes in flight, into a scratch buffer outside the
  // cache, and times it: the disk's direct-I/O read bandwidth at that depth. For bench, while
  // nothing else reads.
  ReadProbe probe_reads(int depth, uint64_t bytes, uint64_t skip) const;

  int64_t slots() const { return plan_.slots; }
  int io_depth() const { return int(io_threads_.size()); }
  // The most reads that were in flight at once since the start or reset_stats().
  int peak_reads_in_flight() const;
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
    bool read_ahead = false;          // being (or was) read by a prefetch
    int chunks_left = 0;              // while loading: reads not finished
    std::string read_error;           // while loading: the first failed read's message
    SwiGluWeights weights;
  };
  struct Source {
    int fd;
    std::string label;
    uint64_t offset, bytes;
  };
  // One read request: [offset, offset + length) of a file (page-aligned) into dst, of which the
  // first `need` bytes must arrive (the rest may lie past the end of the file).
  struct Chunk {
    int slot;
    const Source* source;
    uint64_t offset, length, need;
    std::byte* dst;
  };
  int key_of(const ExpertRef& ref) const { return ref.owner_layer * num_experts_ + ref.index; }
  // A slot to reuse (not pinned, not loading), chosen by the policy; -1 if none. Experts the
  // standing prediction names, and reads ahead not used yet, go last. Prefetches pass
  // for_prefetch and never take either.
  int victim(bool for_prefetch);
  // Replaces the prediction (and, with prefetch on, the reads ahead not started); the caller
  // holds the lock.
  void predict(const std::vector<ExpertRef>& refs, size_t pinned_now);
  // Gives slot `s` to expert `key` and queues its chunks (on `queue`); the caller holds the lock.
  void start_load(int key, int s, std::deque<Chunk>& queue, bool read_ahead);
  // The pages of one projection's tensor in the file and where they go.
  void chunks_of(const Source& src, std::byte* dst, int slot, uint64_t chunk_bytes, std::deque<Chunk>& out) const;
  // Reads one chunk; "" or the error naming the file. The caller holds no lock.
  std::string read_chunk(const Chunk& c) const;
  // The last chunk of slot `s` is done: interleave (without the lock) and mark it ready, or free
  // it and keep the error for the waiters.
  void finish_load(int s, std::unique_lock<std::mutex>& lock);
  void io_loop();
  // A trace line (CROSSMOE_IO_TRACE); the caller holds the lock.
  void trace(const char* format, ...) __attribute__((format(printf, 2, 3)));

  const ModelConfig& config_;
  ExpertCachePlan plan_;
  bool prefetch_;
  bool direct_io_ = true;
  int num_experts_;
  uint64_t chunk_bytes_;
  std::vector<int> fds_;                           // one per safetensors file
  std::vector<std::array<Source, 3>> sources_;     // per key: gate, up, down
  std::vector<SwiGluWeights> shapes_;              // per key (data null)
  std::array<uint64_t, 3> room_{};                 // bytes of a slot per projection
  AnonymousMemory memory_;                         // the slots, each room_[0] + room_[1] + room_[2] bytes
  std::vector<Slot> slots_;
  std::vector<int> slot_of_;                       // per key, -1 when absent
  EvictionTracker tracker_;
  std::vector<int> pinned_;
  std::thread::id pin_owner_;                      // the thread whose step holds pinned_
  std::vector<char> predicted_;                    // per key: named by the current prediction
  bool predicting_ = false;

  mutable std::mutex mutex_;
  // Two, so that a state change wakes only whom it concerns: each wake-up of a thread costs CPU
  // that compute needs on a small machine, and a read's start or end would otherwise wake every
  // idle I/O thread.
  std::condition_variable changed_;                // a slot's state or pins changed (acquire waits)
  std::condition_variable work_;                   // reads were queued, or stop (the I/O threads wait)
  std::vector<int> queue_;                         // keys to read ahead, not started
  std::deque<Chunk> demand_chunks_, ahead_chunks_;  // started loads' reads, misses first
  std::vector<std::string> read_error_;            // per key: why its last read failed
  int in_flight_ = 0, peak_in_flight_ = 0;
  std::chrono::steady_clock::time_point busy_since_;  // when in_flight_ last left 0
  std::chrono::steady_clock::time_point made_ = std::chrono::steady_clock::now();
  std::FILE* trace_ = nullptr;
  bool stop_ = false;
  ExpertCacheStats stats_;
  std::vector<std::thread> io_threads_;
};

}  // namespace crossmoe
