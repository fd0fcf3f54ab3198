#pragma once
// The runtime's worker threads. OpenMP's fork/join waits for every thread of the team at each
// join, and libgomp's waiting threads spin (OMP_WAIT_POLICY, read once before main): on cores
// shared with another busy process, each join then waits for a thread that sits behind that
// process for whole scheduler slices (decode on the demo model fell from ~2,400 tokens/s on one
// thread to 15 with two). Here the calling thread takes work too and never waits for a worker
// that has not started: each thread claims the items of its own run one at a time and then takes
// the other runs' items, so a late worker finds its run taken. Idle workers spin for a few
// microseconds, then sleep. docs/benchmarks.md ("Threads under load", "A run of items per
// thread") has the measurements.
#include <cstdint>
#include <functional>

namespace crossmoe::kernels {

// Multiply-adds below which a product (or a decode step's attention) stays on the calling thread:
// a join costs about 1 us on these machines (a cache line crosses between two cores in about
// 0.2 us each way, and a job moves a few), which one thread's share of 2^17 multiply-adds from
// cache (1-3 us) barely pays. 2^15 before: decode at 2 threads 1.02-1.21x faster on two models of
// small matrices (docs/benchmarks.md, "A run of items per thread").
constexpr int64_t kMinParallelWork = int64_t(1) << 17;

// Runs body(i) for every i in [0, count), spread over the calling thread and the workers, and
// returns when all are done. The thread count is omp_get_max_threads() (`--threads`,
// OMP_NUM_THREADS). Called from inside a body, it runs serially. body must not throw.
void parallel_for(int64_t count, const std::function<void(int64_t)>& body);

// The threads parallel_for spreads over: omp_get_max_threads(), at least 1.
int thread_count();

// Starts the workers now, so that the first parallel_for (a prefill being timed) does not pay
// for creating them.
void start_worker_threads();

}  // namespace crossmoe::kernels
