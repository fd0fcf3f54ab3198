#include "runtime/expert_cache.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>

#include "model/tensor_names.hpp"
#include "util/error.hpp"
#include "util/round_up.hpp"

namespace crossmoe {

namespace {

constexpr uint64_t kPage = 4096;  // direct I/O alignment of offsets, lengths and buffers
const Proj kProjs[3] = {Proj::Gate, Proj::Up, Proj::Down};

// The layers that route to each expert key (owner layer * experts + index), for next-use.
KeyLayers key_layers_of(const ModelConfig& c) {
  KeyLayers k;
  k.layers = c.num_layers;
  k.of_key.resize(size_t(c.num_layers) * c.moe.num_experts);
  double rates = 0;
  int moe_layers = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layers[l].is_moe || c.layers[l].candidates.empty()) continue;
    for (const ExpertRef& r : c.layers[l].candidates) k.of_key[size_t(r.owner_layer) * c.moe.num_experts + r.index].push_back(l);
    rates += double(c.moe.top_k) / double(c.layers[l].candidates.size());
    ++moe_layers;
  }
  k.prior_rate = moe_layers ? rates / moe_layers : 0.0;
  return k;
}

}  // namespace

MemoryBudget parse_memory_budget(const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return UsageError("--memory-budget '" + text + "': " + why +
                      " (expected bytes such as 512M, 2G, 1500000000, or a percentage of the routed experts such as 25%)");
  };
  const size_t used = text.find_first_not_of("0123456789.");
  if (used == 0 || text.empty()) throw bad("not a size");
  double value = 0;
  try {
    size_t parsed = 0;
    value = std::stod(text.substr(0, used), &parsed);
    if (parsed != std::min(used, text.size())) throw bad("not a size");
  } catch (const std::logic_error&) {
    throw bad("not a size");
  }
  if (!std::isfinite(value) || value <= 0) throw bad("must be more than zero");
  const std::string unit = used == std::string::npos ? "" : text.substr(used);
  MemoryBudget b;
  if (unit == "%") {
    if (value > 100) throw bad("a percentage is at most 100%");
    b.percent = value;
    return b;
  }
  static const std::map<std::string, double> units = {
      {"", 1},       {"B", 1},        {"K", 1024.0},   {"KiB", 1024.0},        {"KB", 1e3},
      {"M", 1 << 20}, {"MiB", 1 << 20}, {"MB", 1e6},    {"G", 1024.0 * (1 << 20)}, {"GiB", 1024.0 * (1 << 20)},
      {"GB", 1e9},   {"T", 1099511627776.0}, {"TiB", 1099511627776.0}, {"TB", 1e12}};
  const auto it = units.find(unit);
  if (it == units.end()) throw bad("unknown unit '" + unit + "'");
  const double bytes = std::floor(value * it->second);
  if (bytes < 1) throw bad("must be at least one byte");
  if (bytes > 1e18) throw bad("is too large");
  b.bytes = uint64_t(bytes);
  return b;
}

EvictionPolicy parse_eviction_policy(const std::string& text) {
  if (text == "lru") return EvictionPolicy::Lru;
  if (text == "frequency") return EvictionPolicy::Frequency;
  if (text == "next-use") return EvictionPolicy::NextUse;
  throw UsageError("--eviction '" + text + "': expected lru, frequency or next-use");
}

std::string to_string(EvictionPolicy policy) {
  switch (policy) {
    case EvictionPolicy::Lru: return "lru";
    case EvictionPolicy::Frequency: return "frequency";
    case EvictionPolicy::NextUse: return "next-use";
  }
  return "?";
}

EvictionTracker::EvictionTracker(EvictionPolicy policy, int keys, int64_t decay_period, KeyLayers key_layers)
    : policy_(policy), last_use_(keys, 0), frequency_(keys, 0), decay_period_(std::max<int64_t>(1, decay_period)),
      key_layers_(std::move(key_layers)), next_(keys, 0) {
  if (policy_ == EvictionPolicy::NextUse) {
    require(int(key_layers_.of_key.size()) == keys && key_layers_.layers > 0,
            "the next-use eviction policy needs the layers of every expert");
    chosen_.assign(keys, 0.0);
    layer_steps_.assign(key_layers_.layers, 0.0);
  }
}

void EvictionTracker::begin_step(int layer) {
  layer_ = layer;
  if (!layer_steps_.empty()) layer_steps_[layer] += 1;
}

void EvictionTracker::use(int key) {
  last_use_[key] = ++clock_;
  ++frequency_[key];
  if (++uses_since_decay_ >= decay_period_) {
    for (uint32_t& f : frequency_) f /= 2;
    uses_since_decay_ = 0;
  }
  if (chosen_.empty()) return;
  chosen_[key] += 1;
  // next-use's rates fade four times slower: on the trained models' traces (docs/benchmarks.md)
  // that hit 1-4 points more often than fading at the frequency policy's pace, and 16 times slower less.
  if (++uses_since_rate_decay_ >= 4 * decay_period_) {
    for (double& c : chosen_) c /= 2;
    for (double& c : layer_steps_) c /= 2;
    uses_since_rate_decay_ = 0;
  }
}

void EvictionTracker::expect_next(const std::vector<int>& keys) {
  for (int k : next_keys_) next_[k] = 0;
  next_keys_ = keys;
  for (int k : next_keys_) next_[k] = 1;
}

double EvictionTracker::expected_distance(int key) const {
  if (next_[key]) return 0;
  const std::vector<int>& layers = key_layers_.of_key[key];
  if (layers.empty()) return std::numeric_limits<double>::infinity();
  const int L = key_layers_.layers;
  // The layers that can use it, as distances from this step: 1 .. L.
  double steps = 0;
  std::vector<int> ahead;
  ahead.reserve(layers.size());
  for (int q : layers) {
    ahead.push_back((q - layer_ + L - 1) % L + 1);
    steps += layer_steps_[q];
  }
  std::sort(ahead.begin(), ahead.end());
  // Chosen with probability p at each chance (a prior of two chances at the average rate): the
  // first use is at the j-th chance with probability (1-p)^(j-1) p, the chances repeating every
  // L layers. Summed over all cycles in closed form.
  const double p = std::clamp((chosen_[key] + 2 * key_layers_.prior_rate) / (steps + 2), 1e-6, 1.0);
  const double q = 1 - p, n = double(ahead.size()), r = std::pow(q, n);
  double first_cycle = 0, later = 0, qi = 1;
  for (int d : ahead) {
    first_cycle += d * qi;
    later += qi * (d / (1 - r) + L / ((1 - r) * (1 - r)));
    qi *= q;
  }
  // later counts cycles from the second one on: shift them by one cycle.
  return p * (first_cycle + r * later);
}

bool EvictionTracker::evict_before(int a, int b) const {
  if (policy_ == EvictionPolicy::Frequency && frequency_[a] != frequency_[b]) return frequency_[a] < frequency_[b];
  if (policy_ == EvictionPolicy::NextUse) {
    const double da = expected_distance(a), db = expected_distance(b);
    if (da != db) return da > db;
  }
  return last_use_[a] < last_use_[b];
}

ExpertCachePlan plan_expert_cache(const ModelConfig& c, const Checkpoint& ck, const MemoryBudget& budget) {
  ExpertCachePlan plan;
  plan.min_slots = c.moe.top_k;
  std::array<uint64_t, 3> room{};
  for (int l = 0; l < c.num_layers; ++l) {
    if (!c.layers[l].owns_experts) continue;
    for (int j = 0; j < c.moe.num_experts; ++j) {
      uint64_t bytes = 0;
      for (int p = 0; p < 3; ++p) {
        const std::string name = tensor_names::expert(c, l, j, kProjs[p]);
        const TensorView* t = ck.find(name);
        require(t != nullptr, "checkpoint " + ck.dir().string() + " is missing tensor '" + name + "'");
        bytes += t->nbytes;
        // The aligned range around the tensor: at most one page more than its rounded size.
        room[p] = std::max(room[p], round_up(t->nbytes, kPage) + kPage);
      }
      // Experts may differ in size: llama.cpp's mixes (Q4_K_M, IQ4_XS, ...) give some layers'
      // ffn_down_exps more bits. Every slot holds the largest.
      plan.expert_bytes = std::max(plan.expert_bytes, bytes);
      plan.routed_bytes += bytes;
      ++plan.experts;
    }
  }
  require(plan.experts > 0, "--memory-budget: " + ck.dir().string() + " has no routed experts to keep out of memory");
  plan.slot_bytes = room[0] + room[1] + room[2];
  plan.budget_bytes = budget.bytes > 0 ? budget.bytes : uint64_t(std::floor(double(plan.routed_bytes) * budget.percent / 100.0));
  plan.slots = std::min<int64_t>(plan.experts, int64_t(plan.budget_bytes / plan.expert_bytes));
  if (plan.slots < plan.min_slots) {
    char percent[32];
    std::snprintf(percent, sizeof percent, "%.2f%%", 100.0 * plan.min_slots / double(plan.experts));
    throw Error("--memory-budget of " + std::to_string(plan.budget_bytes) + " bytes holds " + std::to_string(plan.slots) +
                " routed experts of " + std::to_string(plan.expert_bytes) + " bytes, but one token needs " +
                std::to_string(plan.min_slots) + " (top-k) at once: give at least " +
                std::to_string(uint64_t(plan.min_slots) * plan.expert_bytes) + " bytes (" + percent + ")");
  }
  return plan;
}

ExpertCache::ExpertCache(const ModelConfig& c, const Checkpoint& ck, const ModelWeights& w, const ExpertCachePlan& plan,
                         const ExpertCacheOptions& options)
    : config_(c), plan_(plan), prefetch_(options.prefetch), num_experts_(c.moe.num_experts),
      chunk_bytes_(round_up(std::max<uint64_t>(1, options.io_chunk_bytes), kPage)),
      tracker_(options.policy, c.num_layers * c.moe.num_experts, plan.experts, key_layers_of(c)) {
  require(options.io_depth >= 1, "expert cache: the I/O depth must be at least 1");
  const int keys = c.num_layers * num_experts_;
  sources_.resize(keys);
  shapes_.resize(keys);
  slot_of_.assign(keys, -1);
  predicted_.assign(keys, 0);
  read_error_.resize(keys);
  std::map<std::string, int> fd_of_path;
  try {
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layers[l].owns_experts) continue;
      for (int j = 0; j < num_experts_; ++j) {
        const int key = l * num_experts_ + j;
        shapes_[key] = w.layers[l].experts[j];
        for (int p = 0; p < 3; ++p) {
          const std::string name = tensor_names::expert(c, l, j, kProjs[p]);
          const std::filesystem::path& file = ck.path_of(name);
          const TensorView& t = *ck.find(name);
          auto it = fd_of_path.find(file.string());
          if (it == fd_of_path.end()) {
            // Direct I/O keeps the reads out of the page cache; a file system that refuses it
            // (tmpfs) gets buffered reads whose pages are dropped after each read.
            int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            if (fd < 0 && errno == EINVAL) {
              fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
              direct_io_ = false;
            }
            require(fd >= 0, "cannot open " + file.string() + ": " + std::strerror(errno));
            fds_.push_back(fd);
            it = fd_of_path.emplace(file.string(), fd).first;
          }
          sources_[key][p] = {it->second, file.string(), t.file_offset, t.nbytes};
          room_[p] = std::max(room_[p], round_up(t.nbytes, kPage) + kPage);
        }
      }
    }
    const uint64_t slot_bytes = room_[0] + room_[1] + room_[2];
    const uint64_t total = slot_bytes * uint64_t(plan_.slots);
    memory_ = AnonymousMemory(total, "the expert cache", {});
    slots_.resize(plan_.slots);
  } catch (...) {
    for (int fd : fds_) ::close(fd);
    throw;
  }
  if (const char* path = std::getenv("CROSSMOE_IO_TRACE"); path && *path) {
    trace_ = std::fopen(path, "w");
    require(trace_ != nullptr, std::string("CROSSMOE_IO_TRACE: cannot write ") + path + ": " + std::strerror(errno));
  }
  for (int i = 0; i < options.io_depth; ++i) io_threads_.emplace_back([this] { io_loop(); });
}

void ExpertCache::trace(const char* format, ...) {
  if (!trace_) return;
  std::fprintf(trace_, "%.3f ", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - made_).count());
  va_list args;
  va_start(args, format);
  std::vfprintf(trace_, format, args);
  va_end(args);
  std::fputc('\n', trace_);
}

void ExpertCache::note(const std::string& what) {
  const std::lock_guard lock(mutex_);
  trace("note %s", what.c_str());
}

ExpertCache::~ExpertCache() {
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  work_.notify_all();
  for (std::thread& t : io_threads_) t.join();  // each finishes the read it has in flight
  for (int fd : fds_) ::close(fd);
  if (trace_) std::fclose(trace_);
}

void ExpertCache::chunks_of(const Source& src, std::byte* dst, int slot, uint64_t chunk_bytes,
                            std::deque<Chunk>& out) const {
  const uint64_t begin = src.offset / kPage * kPage, need = src.offset - begin + src.bytes;
  const uint64_t length = round_up(need, kPage);
  for (uint64_t at = 0; at < length; at += chunk_bytes)
    out.push_back({slot, &src, begin + at, std::min(chunk_bytes, length - at), std::min(chunk_bytes, need - at), dst + at});
}

std::string ExpertCache::read_chunk(const Chunk& c) const {
  for (uint64_t got = 0; got < c.need;) {
    const ssize_t n = ::pread(c.source->fd, c.dst + got, c.length - got, off_t(c.offset + got));
    if (n > 0) {
      got += uint64_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return "cannot read an expert from " + c.source->label + " at byte " + std::to_string(c.offset + got) + ": " +
           (n == 0 ? std::string("the file ends early (was it changed while the model runs?)") : std::strerror(errno));
  }
  if (!direct_io_) ::posix_fadvise(c.source->fd, off_t(c.offset), off_t(c.length), POSIX_FADV_DONTNEED);
  return {};
}

void ExpertCache::start_load(int key, int s, std::deque<Chunk>& queue, bool read_ahead) {
  Slot& slot = slots_[s];
  if (slot.key >= 0) slot_of_[slot.key] = -1;
  slot.key = key;
  slot.state = State::Loading;
  slot.read_ahead = read_ahead;
  slot.protected_prefetch = read_ahead;
  slot.read_error.clear();
  slot_of_[key] = s;
  read_error_[key].clear();
  std::byte* buffer = memory_.data() + size_t(s) * (room_[0] + room_[1] + room_[2]);
  slot.weights = shapes_[key];
  kernels::Matrix* matrices[3] = {&slot.weights.gate, &slot.weights.up, &slot.weights.down};
  const size_t before = queue.size();
  for (int p = 0; p < 3; ++p) {
    const Source& src = sources_[key][p];
    matrices[p]->data = buffer + (src.offset % kPage);
    chunks_of(src, buffer, s, chunk_bytes_, queue);
    buffer += room_[p];
  }
  slot.chunks_left = int(queue.size() - before);
  trace("load %d %s", key, read_ahead ? "ahead" : "demand");
  changed_.notify_all();  // an acquire waiting for this expert's read to start
  work_.notify_all();
}

void ExpertCache::finish_load(int s, std::unique_lock<std::mutex>& lock) {
  Slot& slot = slots_[s];
  if (slot.read_error.empty()) {
    // No other thread touches a loading slot's buffers, so this needs no lock.
    lock.unlock();
    for (kernels::Matrix* m : {&slot.weights.gate, &slot.weights.up, &slot.weights.down})
      kernels::arrange_for_matmul(*m, const_cast<void*>(m->data));  // as resident weights are (runtime/weights.cpp)
    lock.lock();
    slot.state = State::Ready;
    trace("loaded %d", slot.key);
    for (const Source& src : sources_[slot.key]) stats_.bytes_read += int64_t(src.bytes);
    if (slot.read_ahead) ++stats_.prefetch_reads;
  } else {
    read_error_[slot.key] = slot.read_error;
    slot_of_[slot.key] = -1;
    const int pins = slot.pins;
    slot = Slot();
    slot.pins = pins;  // the waiting acquires drop their own pins
  }
  changed_.notify_all();
}

int ExpertCache::victim(bool for_prefetch) {
  // Tiers: 0 anything, 1 read ahead and not used yet, 2 named by the prediction (the next layer's).
  const auto tier = [&](const Slot& s) { return predicted_[s.key] ? 2 : s.protected_prefetch ? 1 : 0; };
  int best = -1, best_tier = 0;
  for (int i = 0; i < int(slots_.size()); ++i) {
    const Slot& s = slots_[i];
    if (s.pins > 0 || s.state == State::Loading) continue;
    if (s.state == State::Empty) return i;
    const int t = tier(s);
    if (for_prefetch && t > 0) continue;
    if (best < 0 || t < best_tier || (t == best_tier && tracker_.evict_before(s.key, slots_[best].key))) {
      best = i;
      best_tier = t;
    }
  }
  return best;
}

const SwiGluWeights& ExpertCache::acquire(const ExpertRef& ref) {
  std::vector<const SwiGluWeights*> out;
  acquire({ref}, out);
  return *out[0];
}

void ExpertCache::predict(const std::vector<ExpertRef>& refs, size_t pinned_now) {
  std::fill(predicted_.begin(), predicted_.end(), 0);
  predicting_ = !refs.empty();
  std::vector<int> keys;
  for (const ExpertRef& r : refs) keys.push_back(key_of(r));
  for (int k : keys) predicted_[k] = 1;
  tracker_.expect_next(keys);
  // Reads ahead that were never used are fair game again.
  for (Slot& s : slots_) s.protected_prefetch = false;
  queue_.clear();
  // Read ahead only what fits beside this step's experts: a prediction larger than that (a long
  // prefill chunk's next layer) would evict its own reads before they are used.
  if (!prefetch_ || pinned_now + keys.size() > size_t(plan_.slots)) return;
  for (int k : keys)
    if (slot_of_[k] < 0) queue_.push_back(k);
  trace("expect %zu %zu", keys.size(), queue_.size());
}

void ExpertCache::expect(const std::vector<ExpertRef>& next) {
  std::unique_lock lock(mutex_);
  const std::thread::id me = std::this_thread::get_id();
  if (!pinned_.empty() && pin_owner_ != me) changed_.wait(lock, [&] { return pinned_.empty(); });
  predict(next, pinned_.size());
  work_.notify_all();
}

void ExpertCache::acquire(const std::vector<ExpertRef>& refs, std::vector<const SwiGluWeights*>& out, int layer,
                          const std::vector<ExpertRef>* next) {
  using clock = std::chrono::steady_clock;
  std::unique_lock lock(mutex_);
  const std::thread::id me = std::this_thread::get_id();
  // Another thread's step holds pins: wait for its release_all (its pins and ours could not
  // both fit).
  if (!pinned_.empty() && pin_owner_ != me) changed_.wait(lock, [&] { return pinned_.empty(); });
  pin_owner_ = me;
  require(pinned_.size() + refs.size() <= size_t(plan_.slots), "expert cache: more experts pinned at once than it has slots");
  const size_t first_pin = pinned_.size();
  std::vector<int> slot_of_ref(refs.size(), -1);
  const auto pin = [&](size_t i, int s) {
    Slot& slot = slots_[s];
    ++slot.pins;
    slot.protected_prefetch = false;
    tracker_.use(slot.key);
    pinned_.push_back(s);
    slot_of_ref[i] = s;
  };
  const auto unpin_mine = [&] {
    for (size_t i = first_pin; i < pinned_.size(); ++i) --slots_[pinned_[i]].pins;
    pinned_.resize(first_pin);
    changed_.notify_all();
  };
  if (layer >= 0) {
    tracker_.begin_step(layer);
    if (predicting_)
      for (const ExpertRef& r : refs) {
        ++stats_.predicted;
        stats_.predicted_right += predicted_[key_of(r)];
      }
  }
  // Those in the cache (or on their way) first, so that no miss evicts them.
  int hits = 0, loading = 0;  // of this call, for the trace
  for (size_t i = 0; i < refs.size(); ++i) {
    const int key = key_of(refs[i]);
    if (slot_of_[key] >= 0) {
      ++stats_.hits;
      ++hits;
      loading += slots_[slot_of_[key]].state == State::Loading;
      pin(i, slot_of_[key]);
    }
  }
  trace("acquire %d %d %d %d", layer, hits, int(refs.size()) - hits, loading);
  // The next layer's experts are named before the misses take slots, so that none of them is evicted.
  if (layer >= 0) predict(next ? *next : std::vector<ExpertRef>(), first_pin + refs.size());
  double stalled = 0;
  for (size_t i = 0; i < refs.size(); ++i) {
    if (slot_of_ref[i] >= 0) continue;
    const int key = key_of(refs[i]);
    int s = -1;
    const auto start = clock::now();
    // Every slot is pinned or being read: wait for a read to finish (or for a prefetch of this one).
    while (slot_of_[key] < 0 && (s = victim(false)) < 0) changed_.wait(lock);
    stalled += std::chrono::duration<double>(clock::now() - start).count();
    if (slot_of_[key] >= 0) {
      ++stats_.hits;  // read ahead meanwhile
    } else {
      ++stats_.misses;
      start_load(key, s, demand_chunks_, false);
    }
    pin(i, slot_of_[key]);
  }
  work_.notify_all();  // the I/O threads: demand reads, then the reads ahead behind them
  for (size_t i = 0; i < refs.size(); ++i) {
    const int key = key_of(refs[i]);
    const Slot& slot = slots_[slot_of_ref[i]];
    if (slot.state == State::Loading && slot.key == key) {
      const bool ahead = slot.read_ahead;
      const auto start = clock::now();
      changed_.wait(lock, [&] { return slot.state != State::Loading || slot.key != key; });
      const double waited = std::chrono::duration<double>(clock::now() - start).count();
      stalled += waited;
      if (ahead) stats_.stall_ahead_seconds += waited;
    }
  }
  stats_.stall_seconds += stalled;
  trace("ready %d %.3f", layer, 1e3 * stalled);
  out.assign(refs.size(), nullptr);
  for (size_t i = 0; i < refs.size(); ++i) {
    const int key = key_of(refs[i]);
    if (slots_[slot_of_ref[i]].key != key) {  // the read failed
      const std::string error = read_error_[key];
      unpin_mine();
      throw Error(error);
    }
    out[i] = &slots_[slot_of_ref[i]].weights;
  }
}

void ExpertCache::release_all() {
  const std::lock_guard lock(mutex_);
  for (int s : pinned_) --slots_[s].pins;
  pinned_.clear();
  trace("release");
  changed_.notify_all();
}

void ExpertCache::io_loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    work_.wait(lock, [&] { return stop_ || !demand_chunks_.empty() || !ahead_chunks_.empty() || !queue_.empty(); });
    if (stop_) return;
    std::deque<Chunk>& from = !demand_chunks_.empty() ? demand_chunks_ : ahead_chunks_;
    if (from.empty()) {
      // Start the next read ahead only when the ones started have no request left to issue, so
      // that slots are taken (and experts evicted) as late as possible.
      const int key = queue_.front();
      queue_.erase(queue_.begin());
      if (slot_of_[key] >= 0) continue;
      const int s = victim(true);
      if (s < 0) {  // everything is pinned or read ahead already: the rest of the list waits for demand
        queue_.clear();
        continue;
      }
      start_load(key, s, ahead_chunks_, true);
      continue;
    }
    const Chunk chunk = from.front();
    from.pop_front();
    if (in_flight_ == 0) {
      busy_since_ = std::chrono::steady_clock::now();
      trace("busy");
    }
    peak_in_flight_ = std::max(peak_in_flight_, ++in_flight_);
    lock.unlock();
    std::string error = read_chunk(chunk);
    lock.lock();
    if (--in_flight_ == 0) {
      stats_.io_busy_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - busy_since_).count();
      trace("idle");
    }
    Slot& slot = slots_[chunk.slot];
    if (!error.empty() && slot.read_error.empty()) slot.read_error = std::move(error);
    if (--slot.chunks_left == 0) finish_load(chunk.slot, lock);
  }
}

ReadProbe ExpertCache::probe_reads(int depth, uint64_t bytes, uint64_t skip) const {
  // The experts' tensors in key order, as read requests; the probe starts `skip` bytes in.
  std::deque<Chunk> all;
  for (const auto& sources : sources_)
    for (const Source& src : sources)
      if (src.bytes > 0) chunks_of(src, memory_.data(), -1, chunk_bytes_, all);  // dst replaced below
  require(!all.empty(), "expert cache: no expert bytes to probe");
  uint64_t total = 0;
  for (const Chunk& c : all) total += c.need;
  size_t at = 0;
  for (uint64_t skipped = 0; skipped < skip % total; ++at) skipped += all[at].need;
  std::vector<Chunk> plan;
  ReadProbe probe;
  probe.depth = depth;
  for (; probe.bytes < bytes; at = (at + 1) % all.size()) {
    plan.push_back(all[at]);
    probe.bytes += all[at].need;
  }
  std::mutex next_mutex;
  size_t next = 0;
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < depth; ++t)
    threads.emplace_back([&] {
      void* buffer = std::aligned_alloc(kPage, chunk_bytes_);
      if (!buffer) {
        const std::lock_guard lock(next_mutex);
        error = "expert cache: cannot allocate the read probe's buffer";
      }
      for (;;) {
        Chunk c;
        {
          const std::lock_guard lock(next_mutex);
          if (next == plan.size() || !error.empty()) break;
          c = plan[next++];
        }
        c.dst = static_cast<std::byte*>(buffer);
        std::string failed = read_chunk(c);
        if (!failed.empty()) {
          const std::lock_guard lock(next_mutex);
          error = std::move(failed);
        }
      }
      std::free(buffer);
    });
  for (std::thread& t : threads) t.join();
  probe.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  require(error.empty(), error);
  return probe;
}

int ExpertCache::peak_reads_in_flight() const {
  const std::lock_guard lock(mutex_);
  return peak_in_flight_;
}

ExpertCacheStats& ExpertCacheStats::operator+=(const ExpertCacheStats& o) {
  hits += o.hits, misses += o.misses, bytes_read += o.bytes_read, stall_seconds += o.stall_seconds;
  stall_ahead_seconds += o.stall_ahead_seconds, io_busy_seconds += o.io_busy_seconds;
  prefetch_reads += o.prefetch_reads, predicted += o.predicted, predicted_right += o.predicted_right;
  return *this;
}

ExpertCacheStats ExpertCacheStats::operator-(const ExpertCacheStats& o) const {
  ExpertCacheStats d = *this;
  d.hits -= o.hits, d.misses -= o.misses, d.bytes_read -= o.bytes_read, d.stall_seconds -= o.stall_seconds;
  d.stall_ahead_seconds -= o.stall_ahead_seconds, d.io_busy_seconds -= o.io_busy_seconds;
  d.prefetch_reads -= o.prefetch_reads, d.predicted -= o.predicted, d.predicted_right -= o.predicted_right;
  return d;
}

ExpertCacheStats ExpertCache::stats() const {
  const std::lock_guard lock(mutex_);
  ExpertCacheStats s = stats_;
  if (in_flight_ > 0) s.io_busy_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - busy_since_).count();
  return s;
}

void ExpertCache::reset_stats() {
  const std::lock_guard lock(mutex_);
  stats_ = ExpertCacheStats();
  peak_in_flight_ = in_flight_;
  busy_since_ = std::chrono::steady_clock::now();
  trace("note reset");
}

}  // namespace crossmoe
