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

thread_local bool inside_body = false;

// A job's items are split into one run of consecutive items per thread. Each thread takes its own
// run from the front, one item at a time, so that it streams its own rows (claiming single matmul
// blocks in turns interleaved the threads' memory streams and read slower) and its claims stay in
// its own cache line: between two cores of these machines a line takes about 0.2 us each way, and
// a shared counter paid that on every claim. A thread whose run is empty takes the other runs'
// items from their backs, one at a time: the threads finish within one item of each other, and a
// worker that has not started (its core busy with another process) holds nobody up, since the
// caller takes its whole run.
// A run is one atomic word, so that a thread can never claim an item of a job other than the one
// it read: bits 0-19 the run's first unclaimed item, 20-39 the item after its last unclaimed one,
// 40-63 the job's number. An item is per_item_ consecutive indices, one unless the count needs more bits.
constexpr uint64_t kItemBits = 20, kMaxItems = (uint64_t(1) << kItemBits) - 1;
constexpr uint64_t kBackOne = uint64_t(1) << kItemBits;

uint64_t run_front(uint64_t word) { return word & kMaxItems; }
uint64_t run_back(uint64_t word) { return (word >> kItemBits) & kMaxItems; }
uint64_t run_job(uint64_t word) { return word >> (2 * kItemBits); }
// job_: the current job's number (24 bits, as the runs hold it) above its item count.
uint64_t job_number(uint64_t job_word) { return job_word >> kItemBits; }
constexpr uint64_t kMaxJob = (uint64_t(1) << (64 - 2 * kItemBits)) - 1;
uint64_t run_word(uint64_t job, uint64_t front, uint64_t back) {
  return (job << (2 * kItemBits)) | (back << kItemBits) | front;
}

class Pool {
 public:
  explicit Pool(int threads) : runs_(size_t(threads)) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  ~Pool() {
    stop_.store(true);
    job_.fetch_add(uint64_t(1) << kItemBits);
    wake(job_changed_);  // always: a worker may be between its check and its wait
    for (std::thread& t : workers_) t.join();
  }
  int threads() const { return int(workers_.size()) + 1; }

  void run(int64_t count, const std::function<void(int64_t)>& body) {
    per_item_ = (count + int64_t(kMaxItems) - 1) / int64_t(kMaxItems);
    count_ = count;
    body_ = &body;
    const uint64_t items = uint64_t((count + per_item_ - 1) / per_item_);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t job = (job_number(job_.load(std::memory_order_relaxed)) + 1) & kMaxJob;
    const uint64_t n = runs_.size();
    for (uint64_t i = 0; i < n; ++i)
      runs_[i].word.store(run_word(job, items * i / n, items * (i + 1) / n), std::memory_order_relaxed);
    job_.store(job << kItemBits | items);  // publishes the runs (sequentially consistent: see wake)
    if (sleeping_workers_.load() > 0) wake(job_changed_);
    take_items(0, job, items);
    // Wait for the items workers took; spin briefly, then sleep.
    for (int i = 0; i < kSpinRounds && done_.load(std::memory_order_acquire) < items; ++i) cpu_relax();
    if (done_.load(std::memory_order_acquire) >= items) return;
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    caller_sleeping_.store(true);
    job_finished_.wait(lock, [&] { return done_.load() >= items; });
    caller_sleeping_.store(false);
  }

 private:
  // Each worker starts from job word 0, which no job has (the first job's number is 1), so the
  // destructor's change of job_ wakes a worker that never saw a job too.
  void work(int self) {
    uint64_t seen = 0;
    for (;;) {
      for (int i = 0; i < kSpinRounds && job_.load(std::memory_order_relaxed) == seen && !stop_.load(); ++i) cpu_relax();
      if (!stop_.load() && job_.load() == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleeping_workers_.fetch_add(1);
        // stop_ too: a worker still taking items of the last job when the destructor ran has
        // already seen the destructor's change of job_ and would wait for another.
        job_changed_.wait(lock, [&] { return stop_.load() || job_.load() != seen; });
        sleeping_workers_.fetch_sub(1);
      }
      if (stop_.load()) return;
      seen = job_.load();
      take_items(self, job_number(seen), seen & kMaxItems);
    }
  }

  // Claims one item of run r of job `job`, from its front or its back; false when it has none left.
  bool claim(size_t r, uint64_t job, bool front, uint64_t& item) {
    std::atomic<uint64_t>& word = runs_[r].word;
    uint64_t w = word.load(std::memory_order_acquire);
    while (run_job(w) == job && run_front(w) < run_back(w)) {
      const uint64_t taken = front ? w + 1 : w - kBackOne;
      if (word.compare_exchange_weak(w, taken, std::memory_order_acq_rel, std::memory_order_acquire)) {
        item = front ? run_front(w) : run_back(w) - 1;
        return true;
      }
    }
    return false;
  }

  // Runs items of job `job` (of `items` in all) until none is left: this thread's run first, then
  // the others' from their backs.
  void take_items(int self, uint64_t job, uint64_t items) {
    uint64_t ran = 0, item = 0;
    const auto run_item = [&] {
      // The claimed item keeps its job unfinished, so body_ and the counts are still that job's.
      const int64_t begin = int64_t(item) * per_item_, end = std::min(count_, begin + per_item_);
      inside_body = true;
      for (int64_t i = begin; i < end; ++i) (*body_)(i);
      inside_body = false;
      ++ran;
    };
    while (claim(size_t(self), job, true, item)) run_item();
    for (size_t k = 1; k < runs_.size(); ++k)
      while (claim((size_t(self) + k) % runs_.size(), job, false, item)) run_item();
    if (ran > 0 && done_.fetch_add(ran) + ran == items && caller_sleeping_.load()) wake(job_finished_);
  }

  // Sleeping uses a mutex and condition variables, not std::atomic::wait: libstdc++ 12's
  // atomic wait on 64-bit words can miss a notify and sleep forever (seen as a hang at exit).
  // Taking the mutex after changing the atomic and before notifying means a sleeper either saw
  // the change when it checked or is already waiting when the notify comes. Nobody is woken when
  // nobody sleeps (the usual case within a decode step: the threads spin between its products):
  // a sleeper announces itself (sleeping_workers_, caller_sleeping_) before it checks the atomic,
  // the waker changes the atomic before it reads the announcement, both sequentially consistent,
  // so at least one of the two sees the other's store.
  void wake(std::condition_variable& cv) {
    { const std::lock_guard<std::mutex> lock(sleep_mutex_); }
    cv.notify_all();
  }

  struct alignas(64) Run {
    std::atomic<uint64_t> word{0};
  };
  std::vector<Run> runs_;  // one per thread, the caller's first
  std::vector<std::thread> workers_;
  std::mutex sleep_mutex_;
  std::condition_variable job_changed_, job_finished_;
  // On lines of their own: job_ is read by every thread at every job, done_ written by every
  // thread at its end, and neither should move the other's line (or the mutex's) between cores.
  alignas(64) std::atomic<uint64_t> job_{0};
  alignas(64) std::atomic<uint64_t> done_{0};
  alignas(64) std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
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
