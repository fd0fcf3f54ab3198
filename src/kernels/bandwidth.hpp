#pragma once
// Streaming read bandwidth of main memory, measured with all threads: the ceiling for decode,
// which reads every active weight once per token.
#include <cstddef>

namespace crossmoe::kernels {

// Bytes per second of the best of `repeats` full reads of a `bytes`-sized buffer, with the
// threads parallel_for runs on now (the thread count decode uses). Each repeat reads the buffer
// twice, through the dispatched f32 matmul and through a loop of the widest loads the CPU has,
// and the faster counts. The buffer is allocated and faulted in once per process (2 MiB pages
// where the kernel gives them, as the weights ask for) and kept for later calls, so that a call
// times reads only, never page faults; a larger size replaces it.
double measure_read_bandwidth(size_t bytes = size_t(1) << 30, int repeats = 5);

// Bytes the probe's buffer holds resident now (0 before the first call): what a caller leaves
// out of the process's peak RSS.
size_t read_bandwidth_buffer_bytes();

}  // namespace crossmoe::kernels
