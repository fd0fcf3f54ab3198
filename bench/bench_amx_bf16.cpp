// The design probe behind the library's bf16 tile products (matmul_amx.cpp's bf16_tile_matmul_rows,
// built from arrangement (b) below and timed by bench_matvec as "BF16 tiles"); kept for the figures
// of docs/benchmarks.md that only it measures (arrangement (a), repacking per call): f32 activations split
// into three bf16 parts (hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid), whose sum is x
// exactly), each part times the bf16 weights on the tile unit (TDPBF16PS: products of two bf16
// values are exact in f32, the sums in f32), so the product keeps f32 activations as the default
// path's widening FMAs do, at tile speed. Two arrangements: the parts in three A tiles (three tile
// products per chunk, accumulated in one C), and a token's parts as three rows of one A tile (one
// tile product per chunk, the parts' sums added at the end). Beside it, in the same run, the library's own bf16
// products: the exact path (bf16 widened to f32, FMA; the default) and the opt-in VDPBF16PS path
// (activations rounded to bf16, as llama.cpp does). It prints each one's rate and largest error
// against a double-precision product, whether a token's outputs have the same bits alone (one row
// of A) and in a block of 16, and one token's rate over the whole matrix with the weights packed
// in the tile unit's order once (as a loader would) or per call.
// Usage: bench_amx_bf16 [rows] [cols] [tokens] [passes]   (one thread; rows a multiple of 64, cols of 32)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.hpp"
#include "util/dtype.hpp"

using namespace crossmoe;
using namespace crossmoe::kernels;

namespace {

double seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The B tiles of a strip of 16 rows, chunk by chunk of 32 columns: 16 rows of 64 bytes, row k
// holding columns 2k and 2k + 1 of each of the 16 weight rows (TDPBF16PS's pair order).
void pack_strip(const uint16_t* w, int64_t cols, int64_t r0, uint16_t* out) {
  for (int64_t c = 0; c < cols; c += 32)
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 16; ++n)
        for (int i = 0; i < 2; ++i) *out++ = w[(r0 + n) * cols + c + 2 * k + i];
}

// y [tokens][rows] = parts . w^T, tokens in blocks of m_rows (the A and C tiles' rows), rows in
// strips of 64 (four C tiles). parts: the three bf16 parts, each [tokens][cols]. packed: every
// strip's B tiles made once (read with prefetch), or null to pack each strip of 64 rows per call
// into `scratch`.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_product(const uint16_t* w, int64_t rows, int64_t cols,
                                                                     const uint16_t* parts, int tokens, int m_rows,
                                                                     const uint16_t* packed, std::vector<uint16_t>& scratch,
                                                                     float* y) {
  TileConfig config;
  for (int t = 0; t < 4; ++t) config.colsb[t] = 64, config.rows[t] = uint8_t(m_rows);  // C
  config.colsb[4] = 64, config.rows[4] = 16;                                           // B
  for (int t = 5; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = uint8_t(m_rows);  // A: hi, mid, lo
  _tile_loadconfig(&config);
  // Weights packed once are read from memory: each strip's tiles kAhead chunks ahead are asked
  // for first (a tile load waits for all its 16 lines).
  constexpr int64_t kAhead = 4;
  scratch.resize(size_t(64) * cols);
  alignas(64) float out[16 * 16];
  const size_t part = size_t(tokens) * cols;
  for (int64_t r0 = 0; r0 < rows; r0 += 64) {
    const uint16_t* b = packed ? packed + size_t(r0) * cols : scratch.data();
    if (!packed)
      for (int s = 0; s < 4; ++s) pack_strip(w, cols, r0 + 16 * s, scratch.data() + size_t(s) * 16 * cols);
    for (int t0 = 0; t0 < tokens; t0 += m_rows) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t c = 0; c < cols; c += 32) {
        const uint16_t* a = parts + size_t(t0) * cols + c;
        _tile_loadd(5, a, cols * 2);
        _tile_loadd(6, a + part, cols * 2);
        _tile_loadd(7, a + 2 * part, cols * 2);
#define STRIP(S)                                                                                  \
  if (packed && c + 32 * kAhead < cols)                                                           \
    for (int line = 0; line < 16; ++line) _mm_prefetch(reinterpret_cast<const char*>(             \
        b + size_t(S) * 16 * cols + (c + 32 * kAhead) * 16 + 32 * line), _MM_HINT_T0);            \
  _tile_loadd(4, b + size_t(S) * 16 * cols + c * 16, 64);                                         \
  _tile_dpbf16ps(S, 5, 4);                                  \
  _tile_dpbf16ps(S, 6, 4);                                  \
  _tile_dpbf16ps(S, 7, 4);
        STRIP(0) STRIP(1) STRIP(2) STRIP(3)
#undef STRIP
      }
#define STORE(S)                                                                                  \
  _tile_stored(S, out, 64);                                                                       \
  for (int m = 0; m < m_rows; ++m) std::memcpy(y + size_t(t0 + m) * rows + r0 + 16 * S, out + 16 * m, 64);
      STORE(0) STORE(1) STORE(2) STORE(3)
#undef STORE
    }
  }
  _tile_release();
}

// The same product with a token's three parts as three rows of one A tile ([token][part][cols]):
// one TDPBF16PS per chunk and strip for up to 5 tokens (15 rows), the parts' sums added at the end,
// (hi + mid) + lo. A token's rows do not depend on the others', so its bits are the same in any
// block; one token costs one tile product per chunk and strip instead of three.
__attribute__((target("amx-tile,amx-bf16,avx512f"))) void amx_product_rows(const uint16_t* w, int64_t rows, int64_t cols,
                                                                          const uint16_t* token_parts, int tokens,
                                                                          int block, const uint16_t* packed,
                                                                          std::vector<uint16_t>& scratch, float* y) {
  TileConfig config;
  for (int t = 0; t < 4; ++t) config.colsb[t] = 64, config.rows[t] = uint8_t(3 * block);  // C
  config.colsb[4] = 64, config.rows[4] = 16;                                               // B
  config.colsb[5] = 64, config.rows[5] = uint8_t(3 * block);                               // A
  _tile_loadconfig(&config);
  constexpr int64_t kAhead = 4;
  scratch.resize(size_t(64) * cols);
  alignas(64) float out[16 * 16];
  for (int64_t r0 = 0; r0 < rows; r0 += 64) {
    const uint16_t* b = packed ? packed + size_t(r0) * cols : scratch.data();
    if (!packed)
      for (int s = 0; s < 4; ++s) pack_strip(w, cols, r0 + 16 * s, scratch.data() + size_t(s) * 16 * cols);
    for (int t0 = 0; t0 < tokens; t0 += block) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t c = 0; c < cols; c += 32) {
        _tile_loadd(5, token_parts + size_t(3 * t0) * cols + c, cols * 2);
#define STRIP(S)                                                                                  \
  if (packed && c + 32 * kAhead < cols)                                                           \
    for (int line = 0; line < 16; ++line) _mm_prefetch(reinterpret_cast<const char*>(             \
        b + size_t(S) * 16 * cols + (c + 32 * kAhead) * 16 + 32 * line), _MM_HINT_T0);            \
  _tile_loadd(4, b + size_t(S) * 16 * cols + c * 16, 64);                                         \
  _tile_dpbf16ps(S, 5, 4);
        STRIP(0) STRIP(1) STRIP(2) STRIP(3)
#undef STRIP
      }
#define STORE(S)                                                                                  \
  _tile_stored(S, out, 64);                                                                       \
  for (int m = 0; m < block; ++m)                                                                 \
    for (int n = 0; n < 16; ++n)                                                                  \
      y[size_t(t0 + m) * rows + r0 + 16 * S + n] = (out[48 * m + n] + out[48 * m + 16 + n]) + out[48 * m + 32 + n];
      STORE(0) STORE(1) STORE(2) STORE(3)
#undef STORE
    }
  }
  _tile_release();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? atol(argv[1]) : 5632, cols = argc > 2 ? atol(argv[2]) : 2048;
  const int tokens = argc > 3 ? atoi(argv[3]) : 512, passes = argc > 4 ? atoi(argv[4]) : 3;
  if (!isa_supported(Isa::Amx) || !__builtin_cpu_supports("avx512bf16")) {
    std::printf("this CPU (or its kernel) gives no AMX tiles with AVX512_BF16: nothing to measure\n");
    return 0;
  }
  if (rows % 64 || cols % 32 || tokens % 16) {
    std::fprintf(stderr, "rows must be a multiple of 64, cols of 32, tokens of 16\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<uint16_t> w(size_t(rows * cols));
  for (uint16_t& v : w) v = f32_to_bf16(0.05f * normal(rng));
  std::vector<float> x(size_t(tokens) * cols);
  for (float& v : x) v = normal(rng) * (rng() % 8 == 0 ? 20.0f : 1.0f);
  std::vector<uint16_t> parts(3 * x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t hi = f32_to_bf16(x[i]);
    const float rest = x[i] - bf16_to_f32(hi);
    const uint16_t mid = f32_to_bf16(rest), lo = f32_to_bf16(rest - bf16_to_f32(mid));
    parts[i] = hi, parts[x.size() + i] = mid, parts[2 * x.size() + i] = lo;
    if (double(bf16_to_f32(hi)) + bf16_to_f32(mid) + bf16_to_f32(lo) != x[i]) {
      std::fprintf(stderr, "the three parts of activation %zu do not sum to it\n", i);
      return 1;
    }
  }
  std::vector<uint16_t> token_parts(parts.size());  // [token][part][cols]
  for (int t = 0; t < tokens; ++t)
    for (int p = 0; p < 3; ++p)
      std::memcpy(&token_parts[(size_t(t) * 3 + p) * cols], &parts[size_t(p) * x.size() + size_t(t) * cols], size_t(cols) * 2);
  std::vector<double> exact(size_t(tokens) * rows);
  for (int t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += double(bf16_to_f32(w[r * cols + c])) * x[size_t(t) * cols + c];
      exact[size_t(t) * rows + r] = s;
    }
  const auto error = [&](const std::vector<float>& y) {
    double worst = 0, largest = 0;
    for (size_t i = 0; i < y.size(); ++i)
      worst = std::max(worst, std::fabs(y[i] - exact[i])), largest = std::max(largest, std::fabs(exact[i]));
    return worst / largest;
  };
  const Matrix m{w.data(), DType::BF16, rows, cols};
  std::vector<uint16_t> scratch;
  std::vector<float> y_amx(exact.size()), y_exact(exact.size()), y_dot(exact.size());
  std::vector<float> y_rows(exact.size());
  double t_amx = 1e30, t_rows = 1e30, t_exact = 1e30, t_dot = 1e30;
  const int block = tokens % 5 == 0 ? 5 : tokens % 4 == 0 ? 4 : 1;  // tokens per tile of 3 * block rows
  for (int p = 0; p < passes; ++p) {
    double s = seconds();
    amx_product(w.data(), rows, cols, parts.data(), tokens, 16, nullptr, scratch, y_amx.data());
    t_amx = std::min(t_amx, seconds() - s);
    s = seconds();
    amx_product_rows(w.data(), rows, cols, token_parts.data(), tokens, block, nullptr, scratch, y_rows.data());
    t_rows = std::min(t_rows, seconds() - s);
    set_isa(Isa::Avx512Vnni);
    s = seconds();
    matmul(m, x.data(), tokens, y_exact.data());
    t_exact = std::min(t_exact, seconds() - s);
    set_isa(Isa::Avx512Bf16);
    s = seconds();
    matmul(m, x.data(), tokens, y_dot.data());
    t_dot = std::min(t_dot, seconds() - s);
  }
  const double macs = double(rows) * cols * tokens;
  std::printf("matrix %ld x %ld times %d tokens, one thread, best of %d passes\n", long(rows), long(cols), tokens, passes);
  std::printf("%-44s %10s %22s\n", "product", "GMAC/s", "max error / max |y|");
  std::printf("%-44s %10.1f %22.2e\n", "amx, x in three bf16 parts (probe)", macs / t_amx / 1e9, error(y_amx));
  std::printf("%-44s %10.1f %22.2e\n", "amx, the parts as rows of one tile (probe)", macs / t_rows / 1e9, error(y_rows));
  std::printf("%-44s %10.1f %22.2e\n", "avx512_vnni: bf16 widened, FMA (default)", macs / t_exact / 1e9, error(y_exact));
  std::printf("%-44s %10.1f %22.2e\n", "avx512_bf16: x rounded to bf16, VDPBF16PS", macs / t_dot / 1e9, error(y_dot));
  // One token alone: A and C tiles of one row.
  std::vector<uint16_t> one(3 * size_t(cols));
  std::vector<float> alone(rows), alone_packed(rows), alone_exact(rows);
  int64_t differ = 0;
  for (int t : {0, tokens / 2 + 1, tokens - 1}) {
    for (int p = 0; p < 3; ++p)
      std::memcpy(&one[size_t(p) * cols], &parts[size_t(p) * x.size() + size_t(t) * cols], size_t(cols) * 2);
    amx_product(w.data(), rows, cols, one.data(), 1, 1, nullptr, scratch, alone.data());
    for (int64_t r = 0; r < rows; ++r) differ += std::memcmp(&alone[r], &y_amx[size_t(t) * rows + r], 4) != 0;
  }
  std::printf("a token alone against the same token in a block of 16: %ld of %ld outputs differ in their bits\n",
              long(differ), long(3 * rows));
  std::vector<float> alone_rows(rows), alone_rows_packed(rows);
  int64_t differ_rows = 0;
  for (int t : {0, tokens / 2 + 1, tokens - 1}) {
    amx_product_rows(w.data(), rows, cols, &token_parts[size_t(t) * 3 * cols], 1, 1, nullptr, scratch, alone_rows.data());
    for (int64_t r = 0; r < rows; ++r) differ_rows += std::memcmp(&alone_rows[r], &y_rows[size_t(t) * rows + r], 4) != 0;
  }
  std::printf("the parts as rows: a token alone against the same token in a block of %d: %ld of %ld outputs differ\n",
              block, long(differ_rows), long(3 * rows));
  std::vector<uint16_t> packed(w.size());
  for (int64_t r = 0; r < rows; r += 16) pack_strip(w.data(), cols, r, &packed[size_t(r) * cols]);
  double t_per_call = 1e30, t_packed = 1e30, t_one = 1e30, t_rows_packed = 1e30;
  set_isa(Isa::Avx512Vnni);
  for (int p = 0; p < passes; ++p) {
    double s = seconds();
    amx_product(w.data(), rows, cols, one.data(), 1, 1, nullptr, scratch, alone.data());
    t_per_call = std::min(t_per_call, seconds() - s);
    s = seconds();
    amx_product(w.data(), rows, cols, one.data(), 1, 1, packed.data(), scratch, alone_packed.data());
    t_packed = std::min(t_packed, seconds() - s);
    s = seconds();
    amx_product_rows(w.data(), rows, cols, &token_parts[size_t(tokens - 1) * 3 * cols], 1, 1, packed.data(), scratch,
                     alone_rows_packed.data());
    t_rows_packed = std::min(t_rows_packed, seconds() - s);
    s = seconds();
    matmul(m, x.data() + size_t(tokens - 1) * cols, 1, alone_exact.data());
    t_one = std::min(t_one, seconds() - s);
  }
  const double bytes = double(rows) * cols * 2;
  std::printf("one token, GB/s of weights (%.1f MB): amx packing per call %.1f, amx packed once %.1f (same bits: %s), "
              "avx512_vnni %.1f\n",
              bytes / 1e6, bytes / t_per_call / 1e9, bytes / t_packed / 1e9,
              std::memcmp(alone.data(), alone_packed.data(), size_t(rows) * 4) ? "no" : "yes", bytes / t_one / 1e9);
  std::printf("one token, the parts as rows, packed once: %.1f GB/s\n", bytes / t_rows_packed / 1e9);
}
