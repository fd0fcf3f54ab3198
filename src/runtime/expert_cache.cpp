#include "runtime/expert_cache.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "model/tensor_names.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {

constexpr uint64_t kPage = 4096;  // direct I/O alignment of offsets, lengths and buffers
uint64_t round_up(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

const Proj kProjs[3] = {Proj::Gate, Proj::Up, Proj::Down};

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
  throw UsageError("--eviction '" + text + "': expected lru or frequency");
}

std::string to_string(EvictionPolicy policy) { return policy == EvictionPolicy::Lru ? "lru" : "frequency"; }

EvictionTracker::EvictionTracker(EvictionPolicy policy, int keys, int64_t decay_period)
    : policy_(policy), last_use_(keys, 0), frequency_(keys, 0), decay_period_(std::max<int64_t>(1, decay_period)) {}

void EvictionTracker::use(int key) {
  last_use_[key] = ++clock_;
  ++frequency_[key];
  if (++uses_since_decay_ >= decay_period_) {
    for (uint32_t& f : frequency_) f /= 2;
    uses_since_decay_ = 0;
  }
}

bool EvictionTracker::evict_before(int a, int b) const {
  if (policy_ == EvictionPolicy::Frequency && frequency_[a] != frequency_[b]) return frequency_[a] < frequency_[b];
  return last_use_[a] < last_use_[b];
}

std::set<std::string> routed_expert_tensors(const ModelConfig& c) {
  std::set<std::string> names;
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layers[l].owns_experts)
      for (int j = 0; j < c.moe.num_experts; ++j)
        for (Proj p : kProjs) names.insert(tensor_names::expert(c, l, j, p));
  return names;
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
      require(plan.experts == 0 || bytes == plan.expert_bytes,
              "routed experts of " + ck.dir().string() + " differ in size (" + std::to_string(bytes) + " and " +
                  std::to_string(plan.expert_bytes) + " bytes); --memory-budget needs experts of one size");
      plan.expert_bytes = bytes;
      ++plan.experts;
    }
  }
  require(plan.experts > 0, "--memory-budget: " + ck.dir().string() + " has no routed experts to keep out of memory");
  plan.slot_bytes = room[0] + room[1] + room[2];
  plan.routed_bytes = uint64_t(plan.experts) * plan.expert_bytes;
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
                         EvictionPolicy policy, bool prefetch)
    : config_(c), plan_(plan), prefetch_(prefetch), num_experts_(c.moe.num_experts),
      tracker_(policy, c.num_layers * c.moe.num_experts, plan.experts) {
  const int keys = c.num_layers * num_experts_;
  sources_.resize(keys);
  shapes_.resize(keys);
  slot_of_.assign(keys, -1);
  predicted_.assign(keys, 0);
  std::map<std::string, int> fd_of_path;
  try {
    for (int l = 0; l < c.num_layers; ++l) {
      if (!c.layers[l].owns_experts) continue;
      for (int j = 0; j < num_experts_; ++j) {
        const int key = l * num_experts_ + j;
        shapes_[key] = w.layers[l].experts[j];
        for (int p = 0; p < 3; ++p) {
          const std::string name = tensor_names::expert(c, l, j, kProjs[p]);
          const SafetensorsFile& file = ck.file_of(name);
          const TensorView& t = *ck.find(name);
          auto it = fd_of_path.find(file.label());
          if (it == fd_of_path.end()) {
            // Direct I/O keeps the reads out of the page cache; a file system that refuses it
            // (tmpfs) gets buffered reads whose pages are dropped after each read.
            int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
            if (fd < 0 && errno == EINVAL) {
              fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
              direct_io_ = false;
            }
            require(fd >= 0, "cannot open " + file.label() + ": " + std::strerror(errno));
            fds_.push_back(fd);
            it = fd_of_path.emplace(file.label(), fd).first;
          }
          sources_[key][p] = {it->second, file.label(), t.file_offset, t.nbytes};
          room_[p] = std::max(room_[p], round_up(t.nbytes, kPage) + kPage);
        }
      }
    }
    const uint64_t slot_bytes = room_[0] + room_[1] + room_[2];
    const uint64_t total = slot_bytes * uint64_t(plan_.slots);
    memory_ = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    require(memory_ != MAP_FAILED, "cannot allocate the expert cache of " + std::to_string(total) + " bytes");
    slots_.resize(plan_.slots);
  } catch (...) {
    if (memory_ && memory_ != MAP_FAILED) ::munmap(memory_, plan_.slot_bytes * uint64_t(plan_.slots));
    for (int fd : fds_) ::close(fd);
    throw;
  }
  if (prefetch_) io_thread_ = std::thread([this] { io_loop(); });
}

ExpertCache::~ExpertCache() {
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  if (io_thread_.joinable()) io_thread_.join();
  ::munmap(memory_, (room_[0] + room_[1] + room_[2]) * uint64_t(plan_.slots));
  for (int fd : fds_) ::close(fd);
}

void ExpertCache::read_expert(int key, Slot& s) {
  const size_t index = size_t(&s - slots_.data());
  std::byte* buffer = static_cast<std::byte*>(memory_) + index * (room_[0] + room_[1] + room_[2]);
  SwiGluWeights w = shapes_[key];
  kernels::Matrix* matrices[3] = {&w.gate, &w.up, &w.down};
  for (int p = 0; p < 3; ++p) {
    const Source& src = sources_[key][p];
    const uint64_t begin = src.offset / kPage * kPage, lead = src.offset - begin;
    const uint64_t need = lead + src.bytes, length = round_up(need, kPage);
    for (uint64_t got = 0; got < need;) {
      const ssize_t n = ::pread(src.fd, buffer + got, length - got, off_t(begin + got));
      if (n > 0) {
        got += uint64_t(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      throw Error("cannot read an expert from " + src.label + " at byte " + std::to_string(begin + got) + ": " +
                  (n == 0 ? std::string("the file ends early (was it changed while the model runs?)") : std::strerror(errno)));
    }
    if (!direct_io_) ::posix_fadvise(src.fd, off_t(begin), off_t(length), POSIX_FADV_DONTNEED);
    matrices[p]->data = buffer + lead;
    kernels::interleave_rows8(*matrices[p], buffer + lead);  // as resident weights are (runtime/weights.cpp)
    buffer += room_[p];
  }
  s.weights = w;
}

int ExpertCache::victim(bool for_prefetch) {
  int best = -1;
  for (int i = 0; i < int(slots_.size()); ++i) {
    const Slot& s = slots_[i];
    if (s.pins > 0 || s.state == State::Loading) continue;
    if (s.state == State::Empty) return i;
    if (for_prefetch && s.protected_prefetch) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const Slot& b = slots_[best];
    // An unused prefetch goes before anything the policy would keep only when no other slot is free.
    if (s.protected_prefetch != b.protected_prefetch) {
      if (b.protected_prefetch) best = i;
      continue;
    }
    if (tracker_.evict_before(s.key, b.key)) best = i;
  }
  return best;
}

const SwiGluWeights& ExpertCache::acquire(const ExpertRef& ref) {
  using clock = std::chrono::steady_clock;
  std::unique_lock lock(mutex_);
  require(io_error_.empty(), io_error_);
  require(int64_t(pinned_.size()) < plan_.slots, "expert cache: more experts pinned at once than it has slots");
  const int key = key_of(ref);
  if (predicting_) {
    ++stats_.predicted;
    stats_.predicted_right += predicted_[key];
  }
  int s = slot_of_[key];
  if (s >= 0) {
    ++stats_.hits;
    Slot& slot = slots_[s];
    ++slot.pins;
    if (slot.state == State::Loading) {
      const auto start = clock::now();
      changed_.wait(lock, [&] { return slot.state != State::Loading || slot.key != key; });
      stats_.stall_seconds += std::chrono::duration<double>(clock::now() - start).count();
      if (slot.key != key) {  // the read failed
        --slot.pins;
        throw Error(io_error_);
      }
    }
  } else {
    ++stats_.misses;
    const auto start = clock::now();
    // Every slot is pinned or being read ahead: wait for a read to finish.
    while ((s = victim(false)) < 0) changed_.wait(lock);
    Slot& slot = slots_[s];
    if (slot.key >= 0) slot_of_[slot.key] = -1;
    slot.key = key;
    slot.state = State::Loading;
    slot.pins = 1;
    slot_of_[key] = s;
    lock.unlock();
    try {
      read_expert(key, slot);
    } catch (...) {
      lock.lock();
      slot = Slot();
      slot_of_[key] = -1;
      throw;
    }
    lock.lock();
    slot.state = State::Ready;
    stats_.bytes_read += int64_t(plan_.expert_bytes);
    stats_.stall_seconds += std::chrono::duration<double>(clock::now() - start).count();
    changed_.notify_all();
  }
  Slot& slot = slots_[s];
  slot.protected_prefetch = false;
  tracker_.use(key);
  pinned_.push_back(s);
  return slot.weights;
}

void ExpertCache::acquire(const std::vector<ExpertRef>& refs, std::vector<const SwiGluWeights*>& out) {
  out.assign(refs.size(), nullptr);
  std::vector<size_t> order;
  {
    const std::lock_guard lock(mutex_);
    for (size_t i = 0; i < refs.size(); ++i)
      if (slot_of_[key_of(refs[i])] >= 0) order.push_back(i);
    for (size_t i = 0; i < refs.size(); ++i)
      if (slot_of_[key_of(refs[i])] < 0) order.push_back(i);
  }
  for (size_t i : order) out[i] = &acquire(refs[i]);
}

void ExpertCache::release_all() {
  const std::lock_guard lock(mutex_);
  for (int s : pinned_) --slots_[s].pins;
  pinned_.clear();
  changed_.notify_all();
}

void ExpertCache::prefetch(const std::vector<ExpertRef>& refs) {
  {
    const std::lock_guard lock(mutex_);
    std::fill(predicted_.begin(), predicted_.end(), 0);
    predicting_ = !refs.empty();
    for (const ExpertRef& r : refs) predicted_[key_of(r)] = 1;
    if (!prefetch_) return;
    // Reads ahead that were never used are fair game again.
    for (Slot& s : slots_) s.protected_prefetch = false;
    queue_.clear();
    for (const ExpertRef& r : refs)
      if (slot_of_[key_of(r)] < 0) queue_.push_back(key_of(r));
  }
  changed_.notify_all();
}

void ExpertCache::io_loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    changed_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    const int key = queue_.front();
    queue_.erase(queue_.begin());
    if (slot_of_[key] >= 0) continue;
    const int s = victim(true);
    if (s < 0) {  // everything is pinned or read ahead already: the rest of the list waits for demand
      queue_.clear();
      continue;
    }
    Slot& slot = slots_[s];
    if (slot.key >= 0) slot_of_[slot.key] = -1;
    slot.key = key;
    slot.state = State::Loading;
    slot.protected_prefetch = true;
    slot_of_[key] = s;
    lock.unlock();
    std::string error;
    try {
      read_expert(key, slot);
    } catch (const Error& e) {
      error = e.what();
    }
    lock.lock();
    if (error.empty()) {
      slot.state = State::Ready;
      ++stats_.prefetch_reads;
      stats_.bytes_read += int64_t(plan_.expert_bytes);
    } else {
      io_error_ = error;
      const int pins = slot.pins;
      slot = Slot();
      slot.pins = pins;  // a waiting acquire drops its own pin
      slot_of_[key] = -1;
      queue_.clear();
    }
    changed_.notify_all();
  }
}

ExpertCacheStats& ExpertCacheStats::operator+=(const ExpertCacheStats& o) {
  hits += o.hits, misses += o.misses, bytes_read += o.bytes_read, stall_seconds += o.stall_seconds;
  prefetch_reads += o.prefetch_reads, predicted += o.predicted, predicted_right += o.predicted_right;
  return *this;
}

ExpertCacheStats ExpertCacheStats::operator-(const ExpertCacheStats& o) const {
  ExpertCacheStats d = *this;
  d.hits -= o.hits, d.misses -= o.misses, d.bytes_read -= o.bytes_read, d.stall_seconds -= o.stall_seconds;
  d.prefetch_reads -= o.prefetch_reads, d.predicted -= o.predicted, d.predicted_right -= o.predicted_right;
  return d;
}

ExpertCacheStats ExpertCache::stats() const {
  const std::lock_guard lock(mutex_);
  return stats_;
}

void ExpertCache::reset_stats() {
  const std::lock_guard lock(mutex_);
  stats_ = ExpertCacheStats();
}

}  // namespace crossmoe
