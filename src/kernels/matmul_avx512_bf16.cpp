// AVX-512 BF16 kernels: bf16 weights multiply activations rounded to bf16 with the dot-product
// instruction VDPBF16PS (_mm512_dpbf16_ps: 32 products summed pairwise into 16 float lanes), as
// llama.cpp does, instead of widening both to f32 and using two FMAs per 32 columns. Every other
// product (f32, f16, Q8_0, Q4_K weights) is the AVX-512 VNNI table's (every CPU with AVX512_BF16
// has VNNI). Compiled with AVX-512 and AVX512_BF16 flags only; dispatch.cpp gives this table only
// to CPUs that have AVX512_BF16, and only when asked for (CROSSMOE_ISA=avx512_bf16): the default
// products keep f32 activations.
//
// The activations are rounded to bf16 once per matmul call (bf16_x_layout, round to nearest even;
// the instruction treats denormal inputs as zero), so a bf16 product is (bf16(x) . w) summed in
// float: each (row, token) pair has one 16-lane accumulator that takes the whole chunks of 32
// columns in order, then the last partial chunk with its missing columns loaded as zeros (adding
// products 0 * 0 leaves a lane as it is), then its lanes summed in a fixed order (sum_lanes). That order
// is the same for every tile shape and token count, so a token's result has the same bits alone
// (decode) or beside others (prefill, batched decode): one token runs the same instruction on
// the same operands in the same order.
#include <immintrin.h>

#include <cstdint>

#include "kernels/avx512_sum_lanes.hpp"
#include "kernels/kernels.hpp"

namespace crossmoe::kernels {

namespace {

constexpr int64_t kChunk = 32;  // bf16 columns per VDPBF16PS

// The columns [c, c + n) of a bf16 row as one vector, n <= 32, the rest zeros.
inline __m512bh load_bf16(const uint16_t* p, int64_t n) {
  if (n == kChunk) return __m512bh(_mm512_loadu_si512(p));
  return __m512bh(_mm512_maskz_loadu_epi16(__mmask32((1ull << n) - 1), p));
}

// ROWS weight rows times TOK tokens: ROWS * TOK accumulators, ROWS weight vectors and one token
// vector in registers (at most 32). Each weight vector loaded once feeds TOK dot products, each
// token vector ROWS. PREFETCH asks for the next tile's rows at the same columns (the first pass
// over a block of rows reads them from memory; see matmul_impl.hpp).
// w: row r at w + r * ld; x: token t's bf16 activations at x + t * ldx; y: y[t * ldy + r].
template <int ROWS, int TOK, bool PREFETCH>
inline void tile(const uint16_t* w, int64_t ld, const uint16_t* x, int64_t ldx, int64_t cols, float* y,
                 int64_t ldy) {
  __m512 acc[ROWS][TOK];
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) acc[r][t] = _mm512_setzero_ps();
  const auto step = [&](int64_t c, int64_t n) {
    __m512bh wv[ROWS];
    for (int r = 0; r < ROWS; ++r) {
      if constexpr (PREFETCH) __builtin_prefetch(w + (r + ROWS) * ld + c);
      wv[r] = load_bf16(w + r * ld + c, n);
    }
    for (int t = 0; t < TOK; ++t) {
      const __m512bh xv = load_bf16(x + t * ldx + c, n);
      for (int r = 0; r < ROWS; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], xv);
    }
  };
  int64_t c = 0;
  for (; c + kChunk <= cols; c += kChunk) step(c, kChunk);
  if (c < cols) step(c, cols - c);
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) y[t * ldy + r] = sum_lanes(acc[r][t]);
}

template <int ROWS, int TOK, bool PREFETCH>
inline void rows_for_tokens(const uint16_t* w, int64_t ld, int64_t cols, const uint16_t* x, int64_t ldx, float* y,
                            int64_t ldy, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + ROWS <= r1; r += ROWS) tile<ROWS, TOK, PREFETCH>(w + r * ld, ld, x, ldx, cols, y + r, ldy);
  for (; r < r1; ++r) tile<1, TOK, PREFETCH>(w + r * ld, ld, x, ldx, cols, y + r, ldy);
}

// rows_for_tokens for n tokens, 1 <= n <= TOK: a tile of exactly n tokens.
template <int ROWS, int TOK, bool PREFETCH>
inline void rows_for_n_tokens(int n, const uint16_t* w, int64_t ld, int64_t cols, const uint16_t* x, int64_t ldx,
                              float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if constexpr (TOK > 1)
    if (n < TOK) return rows_for_n_tokens<ROWS, TOK - 1, PREFETCH>(n, w, ld, cols, x, ldx, y, ldy, r0, r1);
  rows_for_tokens<ROWS, TOK, PREFETCH>(w, ld, cols, x, ldx, y, ldy, r0, r1);
}

// Register tiles. One token (decode) is memory-bound: 4 rows per tile, each prefetching its
// successor's. Several tokens: 4 rows x 6 tokens, 24 accumulators + 4 weight vectors + 1 token
// vector of the 32 registers (docs/benchmarks.md has the shapes measured against it).
constexpr int kDecodeRows = 4, kTileRows = 4, kTileTokens = 6;

// Rows [r0, r1) of bf16 weights against x as bf16_x_layout wrote it. Several tokens run in groups
// as even as possible of at most kTileTokens, each group over all the rows (they stay in cache
// between groups; each group's activations in L1 through its pass).
void bf16_rows(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const uint16_t*>(m.data);
  const int64_t cols = m.cols, ld = m.row_stride(), ldy = m.rows;
  const auto* xb = reinterpret_cast<const uint16_t*>(x);
  const int64_t ldx = 2 * cols;  // token t's bf16 values start at x + t * cols (floats)
  if (tokens == 1) return rows_for_tokens<kDecodeRows, 1, true>(w, ld, cols, xb, ldx, y, ldy, r0, r1);
  const int groups = (tokens + kTileTokens - 1) / kTileTokens;
  for (int g = 0, t = 0; g < groups; ++g) {
    const int n = (tokens - t) / (groups - g);
    if (g == 0)
      rows_for_n_tokens<kTileRows, kTileTokens, true>(n, w, ld, cols, xb + t * ldx, ldx, y + t * ldy, ldy, r0, r1);
    else
      rows_for_n_tokens<kTileRows, kTileTokens, false>(n, w, ld, cols, xb + t * ldx, ldx, y + t * ldy, ldy, r0, r1);
    t += n;
  }
}

void matmul_rows(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  if (m.dtype == DType::BF16) return bf16_rows(m, x, tokens, y, r0, r1);
  avx512_vnni_kernels().matmul_rows(m, x, tokens, y, r0, r1);
}

// x [tokens, cols] rounded to bf16 (nearest even), token t's cols values packed at the start of
// out + t * cols: the buffer dispatch.cpp gives holds tokens * cols floats.
void round_to_bf16(const float* x, int tokens, int64_t cols, float* out) {
  for (int t = 0; t < tokens; ++t) {
    const float* in = x + t * cols;
    auto* o = reinterpret_cast<uint16_t*>(out + t * cols);
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), __m256i(_mm512_cvtneps_pbh(_mm512_loadu_ps(in + c))));
    if (c < cols) {
      const __mmask16 mask = __mmask16((1u << (cols - c)) - 1);
      _mm256_mask_storeu_epi16(o + c, mask, __m256i(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, in + c))));
    }
  }
}

}  // namespace

const KernelTable& avx512_bf16_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_vnni_kernels();
    t.isa = Isa::Avx512Bf16;
    t.matmul_rows = &matmul_rows;
    t.bf16_x_layout = &round_to_bf16;
    return t;
  }();
  return table;
}

}  // namespace crossmoe::kernels
