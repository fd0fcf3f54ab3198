#include "kernels/bandwidth.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"
#include "util/anonymous_memory.hpp"
#include "util/progress.hpp"

namespace crossmoe::kernels {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kChunk = size_t(64) << 10;  // bytes per parallel_for index of the load loop

// The probe's buffer: mapped once, 2 MiB-aligned and advised to huge pages, every page written
// by the threads that will read it, and kept for the process's lifetime (bench calls the probe
// after every run; faulting 512 MiB in by 4 KiB pages at each call was most of its cost, and
// its reads then went through 4 KiB pages while the weights sit in huge ones).
std::mutex probe_mutex;
AnonymousMemory probe_buffer;  // guarded by probe_mutex

// Makes probe_buffer hold at least `bytes` (whole huge pages).
void reserve_probe_buffer(size_t bytes) {
  if (bytes <= probe_buffer.size()) return;
  probe_buffer = AnonymousMemory();  // the old one first: never both at once
  const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  probe_buffer = AnonymousMemory(size, "the bandwidth probe", {.alignment = kHugePage, .huge_pages = true});
  std::byte* const data = probe_buffer.data();
  parallel_for(int64_t(size / kChunk), [data](int64_t i) {
    // Ones in f32, so that the matmul read sums finite numbers.
    float* f = reinterpret_cast<float*>(data + size_t(i) * kChunk);
    std::fill(f, f + kChunk / sizeof(float), 1.0f);
  });
}

// Loads every byte of [p, p + n) (n a multiple of 512) into vector registers, eight independent
// loads per step, and folds them so that the loads cannot be dropped.
__attribute__((target("avx512f"))) uint64_t read_avx512(const std::byte* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (const std::byte* end = p + n; p < end; p += 512) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + 192));
    a4 = _mm512_xor_si512(a4, _mm512_load_si512(p + 256));
    a5 = _mm512_xor_si512(a5, _mm512_load_si512(p + 320));
    a6 = _mm512_xor_si512(a6, _mm512_load_si512(p + 384));
    a7 = _mm512_xor_si512(a7, _mm512_load_si512(p + 448));
  }
  const __m512i a = _mm512_xor_si512(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)),
                                     _mm512_xor_si512(_mm512_xor_si512(a4, a5), _mm512_xor_si512(a6, a7)));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, a);
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3] ^ lanes[4] ^ lanes[5] ^ lanes[6] ^ lanes[7];
}

__attribute__((target("avx2"))) uint64_t read_avx2(const std::byte* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (const std::byte* end = p + n; p < end; p += 256) {
    a0 = _mm256_xor_si256(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
    a1 = _mm256_xor_si256(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32)));
    a2 = _mm256_xor_si256(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 64)));
    a3 = _mm256_xor_si256(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 96)));
    a4 = _mm256_xor_si256(a4, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 128)));
    a5 = _mm256_xor_si256(a5, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 160)));
    a6 = _mm256_xor_si256(a6, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 192)));
    a7 = _mm256_xor_si256(a7, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 224)));
  }
  const __m256i a = _mm256_xor_si256(_mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)),
                                     _mm256_xor_si256(_mm256_xor_si256(a4, a5), _mm256_xor_si256(a6, a7)));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
  return lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
}

uint64_t read_portable(const std::byte* p, size_t n) {
  uint64_t a[8] = {};
  for (const std::byte* end = p + n; p < end; p += sizeof(a))
    for (int i = 0; i < 8; ++i) {
      uint64_t v;
      std::memcpy(&v, p + i * sizeof(v), sizeof(v));
      a[i] ^= v;
    }
  return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

using ReadFn = uint64_t (*)(const std::byte*, size_t);
ReadFn widest_read() {
  if (isa_supported(Isa::Avx512)) return read_avx512;
  if (isa_supported(Isa::Avx2)) return read_avx2;
  return read_portable;
}

}  // namespace

double measure_read_bandwidth(size_t bytes, int repeats) {
  const std::lock_guard<std::mutex> lock(probe_mutex);
  reserve_probe_buffer(bytes);
  const std::byte* const data = probe_buffer.data();
  const size_t size = probe_buffer.size();
  // Two read patterns, both kept because neither is the faster on every machine and load: the
  // f32 matrix-vector product through the dispatched kernels (several rows streamed at once per
  // thread, the pattern decode reads with) and a loop of the widest loads, 64 KiB per item.
  constexpr int64_t kCols = 4096;
  const int64_t rows = int64_t(size / sizeof(float)) / kCols;
  std::vector<float> x(kCols, 1.0f), y(static_cast<size_t>(rows));
  const Matrix m{data, DType::F32, rows, kCols};
  const ReadFn read = widest_read();
  std::atomic<uint64_t> sink{0};  // the loads' folded words go somewhere, so they stay
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch product;
    matmul(m, x.data(), 1, y.data());
    best = std::max(best, double(size) / product.seconds());
    Stopwatch loads;
    parallel_for(int64_t(size / kChunk), [&](int64_t i) {
      sink.fetch_xor(read(data + size_t(i) * kChunk, kChunk), std::memory_order_relaxed);
    });
    best = std::max(best, double(size) / loads.seconds());
  }
  return best;
}

size_t read_bandwidth_buffer_bytes() {
  const std::lock_guard<std::mutex> lock(probe_mutex);
  return probe_buffer.size();
}

}  // namespace crossmoe::kernels
