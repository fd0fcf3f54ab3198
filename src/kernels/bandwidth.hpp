#pragma once
// Streaming read bandwidth of main memory, measured with all threads: the ceiling for decode,
// which reads every active weight once per token.
#include <cstddef>

namespace crossmoe::kernels {

// Bytes per second of the best of `repeats` full reads of a `bytes`-sized buffer.
double measure_read_bandwidth(size_t bytes = size_t(1) << 30, int repeats = 5);

}  // namespace crossmoe::kernels
