#include "kernels/thread_pool.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace crossmoe::kernels {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Rounds of cpu_relax() an idle worker (or a caller waiting for the last items) spends before it
// sleeps: a few tens of microseconds, enough to catch the next matmul of a decode step on an idle
// machine, short enough not to hold a shared core.
constexpr int kSpinRounds = 1000;

constexpr int kItemsPerThread = 4;

thread_local bool inside_body = false;

// One job at a time, described by one atomic word so that a worker can never claim an item of a
// job other than the one it read: bits 0-19 the next unclaimed item, 20-39 the item count, 40-63
// the job's number (threads x kItemsPerThread items fit easily).
constexpr uint64_t kItemBits = 20, kMaxItems = (uint64_t(1) << kItemBits) - 1;

uint64_t next_item(uint64_t word) { return word & kMaxItems; }
uint64_t item_count(uint64_t word) { return (word >> kItemBits) & kMaxItems; }
uint64_t job_number(uint64_t word) { return word >> (2 * kItemBits); }

class Pool {
 public:
  explicit Pool(int threads) {
    // Each worker starts from the job word as it is now: a worker that read it only once running
    // could read a word that a job or the destructor had already changed, and wait for a change
    // that never comes (seen as a hang when a pool was replaced or destroyed right after creation).
    const uint64_t initial = job_.load();
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, initial] { work(initial); });
  }
  ~Pool() {
    stop_.store(true);
    job_.fetch_add(uint64_t(1) << (2 * kItemBits));
    wake(job_changed_);
    for (std::thread& t : workers_) t.join();
  }
  int threads() const { return int(workers_.size()) + 1; }

  void run(int64_t count, const std::function<void(int64_t)>& body) {
    // Items are runs of consecutive indices, a few per thread: long runs keep each thread
    // streaming its own rows (claiming single matmul blocks interleaved the threads' memory
    // streams and read slower), several per thread let whoever is running take a late thread's share.
    const int64_t items_wanted = std::min<int64_t>(count, int64_t(threads()) * kItemsPerThread);
    per_item_ = (count + items_wanted - 1) / items_wanted;
    count_ = count;
    body_ = &body;
    const uint64_t items = uint64_t((count + per_item_ - 1) / per_item_);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t job = job_number(job_.load(std::memory_order_relaxed)) + 1;
    job_.store((job << (2 * kItemBits)) | (items << kItemBits), std::memory_order_release);
    wake(job_changed_);
    take_items();
    // Wait for the items workers took; spin briefly, then sleep.
    for (int i = 0; i < kSpinRounds && done_.load(std::memory_order_acquire) < items; ++i) cpu_relax();
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    job_finished_.wait(lock, [&] { return done_.load(std::memory_order_acquire) >= items; });
  }

 private:
  void work(uint64_t seen) {
    for (;;) {
      for (int i = 0; i < kSpinRounds && job_.load(std::memory_order_relaxed) == seen && !stop_.load(); ++i) cpu_relax();
      {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        // stop_ too: a worker still taking items of the last job when the destructor ran has
        // already seen the destructor's change of job_ and would wait for another.
        job_changed_.wait(lock, [&] { return stop_.load() || job_.load(std::memory_order_acquire) != seen; });
      }
      if (stop_.load()) return;
      seen = take_items();
    }
  }

  // Claims and runs items of the current job until none is left; returns the job word seen last.
  uint64_t take_items() {
    uint64_t word = job_.load(std::memory_order_acquire);
    while (next_item(word) < item_count(word)) {
      if (!job_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      // The claimed item keeps its job unfinished, so body_ and the counts are still that job's.
      const int64_t begin = int64_t(next_item(word)) * per_item_, end = std::min(count_, begin + per_item_);
      inside_body = true;
      for (int64_t i = begin; i < end; ++i) (*body_)(i);
      inside_body = false;
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == item_count(word)) wake(job_finished_);
      word = job_.load(std::memory_order_acquire);
    }
    return word;
  }

  // Sleeping uses a mutex and condition variables, not std::atomic::wait: libstdc++ 12's
  // atomic wait on 64-bit words can miss a notify and sleep forever (seen as a hang at exit).
  // Taking the mutex after changing the atomic and before notifying means a sleeper either saw
  // the change when it checked or is already waiting when the notify comes.
  void wake(std::condition_variable& cv) {
    { const std::lock_guard<std::mutex> lock(sleep_mutex_); }
    cv.notify_all();
  }

  std::vector<std::thread> workers_;
  std::mutex sleep_mutex_;
  std::condition_variable job_changed_, job_finished_;
  std::atomic<uint64_t> job_{0};
  std::atomic<uint64_t> done_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t count_ = 0, per_item_ = 1;
};

std::mutex pool_mutex;  // one caller at a time drives the pool; others run serially
std::unique_ptr<Pool> pool;

// The pool for the current thread count; pool_mutex held.
Pool& current_pool() {
  const int threads = thread_count();
  if (!pool || pool->threads() != threads) {
    pool.reset();
    pool = std::make_unique<Pool>(threads);
  }
  return *pool;
}

}  // namespace

int thread_count() { return std::max(1, omp_get_max_threads()); }

void parallel_for(int64_t count, const std::function<void(int64_t)>& body) {
  std::unique_lock<std::mutex> lock(pool_mutex, std::try_to_lock);
  if (count > 1 && !inside_body && lock.owns_lock()) {
    Pool& p = current_pool();
    if (p.threads() > 1) return p.run(count, body);
  }
  for (int64_t i = 0; i < count; ++i) body(i);
}

void start_worker_threads() {
  const std::lock_guard<std::mutex> lock(pool_mutex);
  current_pool();
}

}  // namespace crossmoe::kernels
