#include "kernels/bandwidth.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <memory>

#include "util/progress.hpp"

namespace crossmoe::kernels {

double measure_read_bandwidth(size_t bytes, int repeats) {
  const size_t n = bytes / sizeof(uint64_t);
  std::unique_ptr<uint64_t[]> buffer(new uint64_t[n]);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buffer[i] = i;  // touch every page with the threads that read it
  double best = 0.0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < repeats; ++r) {
    uint64_t sum = 0;
    Stopwatch watch;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; ++i) sum += buffer[i];
    best = std::max(best, double(n * sizeof(uint64_t)) / watch.seconds());
    sink = sink + sum;
  }
  return best;
}

}  // namespace crossmoe::kernels
