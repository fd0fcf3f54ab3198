#pragma once
// The matmul / dot / axpy bodies, written once over a SIMD "lane" type S. Each ISA's .cpp file
// includes this with its own S, compiled with that ISA's flags.
//   S::V            vector of S::width floats
//   S::zero(), S::load(const float*), S::store(float*, V), S::fma(a, b, acc), S::add(a, b), S::sum(V)
//   S::sub(a, b), S::mul(a, b), S::max(a, b) (a > b ? a : b), S::min(a, b) (a < b ? a : b)
//   S::fused_fma(a, b, c)   a * b + c rounded once on every ISA (S::fma is unfused in the portable code)
//   S::pow2(n)      2^n for integer-valued n in [-126, 127] (exponent bits, integer steps)
//   S::widen<D>(const Stored<D>*)   load S::width stored elements as floats
//   S::widen_bf16_pair(const uint16_t*, V& even, V& odd)   load 2 * S::width bf16 elements: even
//                   gets elements 0, 2, 4, ..., odd gets 1, 3, 5, ... (a shift and a mask, no shuffle)
//   S::fma1(a, b, acc)   a * b + acc on single floats, rounded as S::fma rounds each lane
//   S::decode_rows  rows per tile for one token
//   S::tile_rows<D>, S::tile_tokens<D>   rows x tokens per register tile for several tokens
//                   against weights of dtype D (as many accumulators as the registers hold
//                   beside the weight vectors, without spilling)
#include <algorithm>
#include <cmath>

#include <bit>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/quant_matmul_impl.hpp"

// Internal linkage on purpose: each ISA file gets its own copy of every function here, so the
// linker can never hand AVX-512 code to a caller on a machine without it.
namespace crossmoe::kernels {
namespace impl {
namespace {

template <DType D> struct StoredOf { using type = uint16_t; };
template <> struct StoredOf<DType::F32> { using type = float; };
template <DType D> using Stored = typename StoredOf<D>::type;

template <DType D> inline float scalar_widen(Stored<D> v) {
  if constexpr (D == DType::F32) return v;
  else if constexpr (D == DType::BF16) return std::bit_cast<float>(uint32_t(v) << 16);
  else return f16_to_f32(v);
}

// One token (decode) reads each row once from memory: the tile asks for the next tile's rows at
// the same columns ahead of time, since rows of small matrices (an MoE's experts) end before the
// hardware prefetcher has picked up their streams. Several tokens (a batched decode step, a
// prefill chunk) do the same on the first pass over a block of rows; later passes over the same
// rows find them in cache. PREFETCH: kNextTile asks for all ROWS rows of the next tile, kNextRows
// for those of its rows set in next_rows (bit i: row i of the next tile), so that the passes of
// several groups of tokens over one tile can share its next tile's reads.
// ROWS weight rows times TOK token vectors: every weight vector loaded (and widened) once feeds
// TOK FMAs, every token vector loaded once feeds ROWS FMAs. Every (row, token) pair is summed in
// the same order whatever the tile, so a token's result does not depend on the tokens beside it:
// one vector accumulator over the whole chunks, its lanes summed by S::sum, then the columns
// after the last whole chunk one by one with S::fma1, an explicit fused multiply-add (a plain
// `s += w * x` there would be fused or not at the compiler's choice, per tile shape).
// bf16 rows are read 2 * S::width at a time, split into even and odd elements; x then comes in
// the layout of bf16_x_layout (each such chunk's even columns, then its odd ones).
// A tile may also cover one span of the whole chunks' columns, [begin, end) (multiples of
// kColumnSpan, itself a multiple of every ISA's chunk): its accumulators start from `carried` (from zero at column 0) and, unless the span
// reaches the last whole chunk, go back there instead of being summed. Vector accumulators pass
// through memory unchanged, so a tile run span by span adds every chunk in the order of one run
// over all the columns: the same bits.
enum Prefetch { kNone, kNextTile, kNextRows };
inline constexpr int64_t kColumnSpan = 2048;
struct ColumnSpan {
  int64_t begin = 0, end = INT64_MAX;
  void* carried = nullptr;  // ROWS x TOK vectors
};
template <class S, DType D, int ROWS, int TOK, Prefetch PREFETCH>
inline void tile(const Stored<D>* w, int64_t ld, const float* x, int64_t cols, int64_t ldx, float* y,
                 int64_t ldy, unsigned next_rows = 0, ColumnSpan span = {}) {
  const auto prefetch = [&](int r, int64_t c) {
    if constexpr (PREFETCH == kNextTile) __builtin_prefetch(w + (r + ROWS) * ld + c);
    if constexpr (PREFETCH == kNextRows)
      if (next_rows >> r & 1) __builtin_prefetch(w + (r + ROWS) * ld + c);
  };
  using V = typename S::V;
  V acc[ROWS][TOK];
  V* carried = static_cast<V*>(span.carried);
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) acc[r][t] = span.begin == 0 ? S::zero() : carried[r * TOK + t];
  int64_t c = span.begin;
  const int64_t limit = std::min(cols, span.end);
  if constexpr (D == DType::BF16) {
    for (; c + 2 * S::width <= limit; c += 2 * S::width) {
      for (int r = 0; r < ROWS; ++r) {
        typename S::V we, wo;
        prefetch(r, c);
        S::widen_bf16_pair(w + r * ld + c, we, wo);
        for (int t = 0; t < TOK; ++t)
          acc[r][t] = S::fma(wo, S::load(x + t * ldx + c + S::width), S::fma(we, S::load(x + t * ldx + c), acc[r][t]));
      }
    }
  }
  for (; D != DType::BF16 && c + S::width <= limit; c += S::width) {
    typename S::V xv[TOK];
    for (int t = 0; t < TOK; ++t) xv[t] = S::load(x + t * ldx + c);
    for (int r = 0; r < ROWS; ++r) {
      prefetch(r, c);
      const typename S::V wv = S::template widen<D>(w + r * ld + c);
      for (int t = 0; t < TOK; ++t) acc[r][t] = S::fma(wv, xv[t], acc[r][t]);
    }
  }
  if (span.end < cols) {  // more spans to come
    for (int r = 0; r < ROWS; ++r)
      for (int t = 0; t < TOK; ++t) carried[r * TOK + t] = acc[r][t];
    return;
  }
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) {
      float s = S::sum(acc[r][t]);
      for (int64_t k = c; k < cols; ++k) s = S::fma1(scalar_widen<D>(w[r * ld + k]), x[t * ldx + k], s);
      y[t * ldy + r] = s;
    }
}

// The tiles of several tokens, called rather than inlined: inlined into the loops over rows and
// groups, GCC's register allocation reloaded their row and prefetch pointers from the stack every
// 32 columns (the 4 x 4 bf16 tile at 0.75-0.9x the rate of the same tile called).
template <class S, DType D, int ROWS, int TOK, Prefetch PREFETCH>
[[gnu::noinline]] void tile_called(const Stored<D>* w, int64_t ld, const float* x, int64_t cols, float* y,
                                   int64_t ldy, unsigned next_rows, ColumnSpan span = {}) {
  tile<S, D, ROWS, TOK, PREFETCH>(w, ld, x, cols, cols, y, ldy, next_rows, span);
}

template <class S, DType D, int ROWS, int TOK, Prefetch PREFETCH>
inline void rows_for_tokens(const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int64_t ldy, float* y,
                            int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + ROWS <= r1; r += ROWS) {
    if constexpr (TOK == 1) tile<S, D, ROWS, TOK, PREFETCH>(w + r * ld, ld, x, cols, cols, y + r, ldy);
    else tile_called<S, D, ROWS, TOK, PREFETCH>(w + r * ld, ld, x, cols, y + r, ldy, 0);
  }
  for (; r < r1; ++r) tile<S, D, 1, TOK, PREFETCH>(w + r * ld, ld, x, cols, cols, y + r, ldy);
}

// rows_for_tokens for n tokens, 1 <= n <= TOK: a tile of exactly n tokens.
template <class S, DType D, int ROWS, int TOK, Prefetch PREFETCH>
inline void rows_for_n_tokens(int n, const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int64_t ldy,
                              float* y, int64_t r0, int64_t r1) {
  if constexpr (TOK > 1)
    if (n < TOK) return rows_for_n_tokens<S, D, ROWS, TOK - 1, PREFETCH>(n, w, ld, cols, x, ldy, y, r0, r1);
  rows_for_tokens<S, D, ROWS, TOK, PREFETCH>(w, ld, cols, x, ldy, y, r0, r1);
}

// One tile of ROWS rows and n tokens, 1 <= n <= TOK.
template <class S, DType D, int ROWS, int TOK, Prefetch PREFETCH>
inline void tile_for_n_tokens(int n, const Stored<D>* w, int64_t ld, const float* x, int64_t cols, float* y,
                              int64_t ldy, unsigned next_rows, ColumnSpan span = {}) {
  if constexpr (TOK > 1)
    if (n < TOK) return tile_for_n_tokens<S, D, ROWS, TOK - 1, PREFETCH>(n, w, ld, x, cols, y, ldy, next_rows, span);
  tile_called<S, D, ROWS, TOK, PREFETCH>(w, ld, x, cols, y, ldy, next_rows, span);
}

// Prefill (more tokens than a batched decode step): each group of tokens goes over [r0, r1) one
// span of kColumnSpan columns at a time, every tile of rows in turn, so that the group's x for the
// span (4 tokens x 2048 columns x 4 bytes: 32 KiB) stays in L1 for all the tiles. Over all the
// columns at once, a group's x outgrew L1 past 2048 columns and every tile read it again from L2:
// the 4 x 4 bf16 tile ran at ~82% of the FMA peak at 2048 columns, ~59% at 4096 (one Zen 5 class
// core, 48 KiB L1). Spans of 2048: 1.1-1.2x at 4096 columns, 1.0-1.1x at 5632, the same at 2048;
// spans of 512 were slower (0.6-0.98x: each weight row read in short runs).
template <class S, DType D, Prefetch PREFETCH>
void group_over_spans(int n, const Stored<D>* w, int64_t ld, int64_t cols, const float* x, float* y, int64_t ldy,
                      int64_t r0, int64_t r1) {
  constexpr int kTok = S::template tile_tokens<D>, kRows = S::template tile_rows<D>;
  struct Carried {
    typename S::V v[kTok];
  };
  thread_local std::vector<Carried> carried;  // a row's kTok vectors, per row of [r0, r1)
  carried.resize(size_t(r1 - r0));
  for (int64_t c0 = 0;; c0 += kColumnSpan) {
    const auto span = [&](int64_t r) { return ColumnSpan{c0, c0 + kColumnSpan, carried[size_t(r - r0)].v}; };
    int64_t r = r0;
    for (; r + kRows <= r1; r += kRows)
      tile_for_n_tokens<S, D, kRows, kTok, PREFETCH>(n, w + r * ld, ld, x, cols, y + r, ldy, 0, span(r));
    for (; r < r1; ++r) tile_for_n_tokens<S, D, 1, kTok, kNone>(n, w + r * ld, ld, x, cols, y + r, ldy, 0, span(r));
    if (c0 + kColumnSpan >= cols) break;
  }
}

// One token runs tiles of S::decode_rows rows (it reads every weight once: memory-bound). More
// tokens run in groups as even as possible of at most S::tile_tokens<D>, each group's tiles of
// S::tile_rows<D> rows. The order of the sums is the same whatever the order of the tiles; the
// orders differ in what stays in cache:
// - Up to kRowBlockedTokens tokens (a batched decode step) whose x fits kRowsOuterBytes: each
//   tile of rows, every group in turn, then the next tile. The tile's rows come from memory once
//   and stay in L1 for the other groups, x comes from L2, and each group asks for one row of the
//   next tile, so the next tile's reads spread over all the groups' passes instead of coming
//   together in the first one (bf16 at 1024 columns, one thread, from memory: 1.1x at 16 tokens,
//   1.25-1.3x at 8, 1.05-1.1x at 32 per CPU second; at 2048 columns and 16 tokens even, at
//   2816-5632 0.9x: there x is too large to come from L2 at the tiles' rate).
// - Other batched steps: every group goes over a block of kRowBlock rows before the next block:
//   the block comes from memory once, for the first group, and from L2 for the others (groups over
//   all of [r0, r1) found a large matrix's rows gone from L2 by the second group: 1024 x 2816 bf16
//   at 16 tokens, 1.2-1.3x faster per CPU second this way).
// - More tokens (prefill): passes over [r0, r1) per group, a span of columns at a time
//   (group_over_spans).
inline constexpr int kRowBlockedTokens = 32;
inline constexpr int64_t kRowBlock = 64;
inline constexpr int64_t kRowsOuterBytes = 128 << 10;
template <class S, DType D>
void matmul_rows_typed(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const Stored<D>*>(m.data);
  const int64_t cols = m.cols, ld = m.row_stride(), ldy = m.rows;
  if (tokens == 1) return rows_for_tokens<S, D, S::decode_rows, 1, kNextTile>(w, ld, cols, x, ldy, y, r0, r1);
  constexpr int kTok = S::template tile_tokens<D>, kRows = S::template tile_rows<D>;
  const int groups = (tokens + kTok - 1) / kTok;
  if (tokens <= kRowBlockedTokens && int64_t(tokens) * cols * int64_t(sizeof(float)) <= kRowsOuterBytes) {
    int first[kRowBlockedTokens], count[kRowBlockedTokens];
    unsigned next_rows[kRowBlockedTokens];
    for (int g = 0, t = 0; g < groups; ++g) {
      first[g] = t;
      count[g] = (tokens - t) / (groups - g);
      t += count[g];
      next_rows[g] = 0;
      for (int i = 0; i < kRows; ++i)
        if (groups >= kRows ? i == g : i % groups == g) next_rows[g] |= 1u << i;
    }
    int64_t r = r0;
    for (; r + kRows <= r1; r += kRows)
      for (int g = 0; g < groups; ++g)
        tile_for_n_tokens<S, D, kRows, kTok, kNextRows>(count[g], w + r * ld, ld, x + first[g] * cols, cols,
                                                        y + first[g] * ldy + r, ldy, next_rows[g]);
    for (; r < r1; ++r)
      for (int g = 0; g < groups; ++g)
        tile_for_n_tokens<S, D, 1, kTok, kNone>(count[g], w + r * ld, ld, x + first[g] * cols, cols,
                                                y + first[g] * ldy + r, ldy, 0);
    return;
  }
  if (tokens > kRowBlockedTokens) {
    for (int g = 0, t = 0; g < groups; ++g) {
      const int n = (tokens - t) / (groups - g);
      if (g == 0) group_over_spans<S, D, kNextTile>(n, w, ld, cols, x + t * cols, y + t * ldy, ldy, r0, r1);
      else group_over_spans<S, D, kNone>(n, w, ld, cols, x + t * cols, y + t * ldy, ldy, r0, r1);
      t += n;
    }
    return;
  }
  for (int64_t b0 = r0; b0 < r1; b0 += kRowBlock) {
    const int64_t b1 = std::min(r1, b0 + kRowBlock);
    for (int g = 0, t = 0; g < groups; ++g) {
      const int n = (tokens - t) / (groups - g);
      if (g == 0)
        rows_for_n_tokens<S, D, kRows, kTok, kNextTile>(n, w, ld, cols, x + t * cols, ldy, y + t * ldy, b0, b1);
      else
        rows_for_n_tokens<S, D, kRows, kTok, kNone>(n, w, ld, cols, x + t * cols, ldy, y + t * ldy, b0, b1);
      t += n;
    }
  }
}

// x as tile reads it against bf16 weights: in each whole chunk of 2 * S::width columns, the even
// columns first, then the odd ones; the columns after the last whole chunk stay in place.
template <class S>
void bf16_x_layout(const float* x, int tokens, int64_t cols, float* out) {
  constexpr int64_t W = S::width;
  for (int t = 0; t < tokens; ++t) {
    const float* in = x + t * cols;
    float* o = out + t * cols;
    int64_t c = 0;
    for (; c + 2 * W <= cols; c += 2 * W)
      for (int64_t i = 0; i < W; ++i) o[c + i] = in[c + 2 * i], o[c + W + i] = in[c + 2 * i + 1];
    for (; c < cols; ++c) o[c] = in[c];
  }
}

template <class S>
void matmul_rows(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  switch (m.dtype) {
    case DType::F32: return matmul_rows_typed<S, DType::F32>(m, x, tokens, y, r0, r1);
    case DType::BF16: return matmul_rows_typed<S, DType::BF16>(m, x, tokens, y, r0, r1);
    case DType::F16: return matmul_rows_typed<S, DType::F16>(m, x, tokens, y, r0, r1);
    default: return;  // dtypes are checked when weights are bound
  }
}

template <class S>
float dot(const float* a, const float* b, int n) {
  typename S::V acc0 = S::zero(), acc1 = S::zero();
  int i = 0;
  for (; i + 2 * S::width <= n; i += 2 * S::width) {
    acc0 = S::fma(S::load(a + i), S::load(b + i), acc0);
    acc1 = S::fma(S::load(a + i + S::width), S::load(b + i + S::width), acc1);
  }
  for (; i + S::width <= n; i += S::width) acc0 = S::fma(S::load(a + i), S::load(b + i), acc0);
  float s = S::sum(acc0) + S::sum(acc1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class S>
void axpy(float alpha, const float* x, float* y, int n) {
  const typename S::V a = S::broadcast(alpha);
  int i = 0;
  for (; i + S::width <= n; i += S::width) S::store(y + i, S::fma(a, S::load(x + i), S::load(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// Attention (kernels.hpp): each (query, position) score is one lane of a vector over kKeyTile
// positions, summed over the dimensions in two fused multiply-add chains (even and odd
// dimensions, added at the end), and each (query, output dimension) of P V one lane summed over
// the positions in order. No lane ever meets another, so a query's bits do not depend on the
// queries beside it, on the tile or chunk shapes, or on where a range of positions is split.
// Queries go kQueries at a time so that each key or value vector loaded feeds that many
// independent chains (one query alone would wait on the latency of its own chain).
// (The kernels this replaces scored a query with one dot product per position, two sums across
// lanes each: 3,000-token prefill ran at 0.8-0.95x of the matmul-per-block code before them.)
template <class S> inline constexpr int kQueries = S::width >= 16 ? 4 : 2;

// Scores of Q queries against the kKeyTile positions of one tile: out[i][lane].
template <class S, int Q>
inline void score_tile(const float* const* q, const float* tile, int hd, float* const* out, int offset) {
  constexpr int V = kKeyTile / S::width;
  typename S::V even[Q][V], odd[Q][V];
  for (int i = 0; i < Q; ++i)
    for (int v = 0; v < V; ++v) even[i][v] = odd[i][v] = S::zero();
  int d = 0;
  for (; d + 2 <= hd; d += 2)
    for (int v = 0; v < V; ++v) {
      const typename S::V ke = S::load(tile + d * kKeyTile + v * S::width);
      const typename S::V ko = S::load(tile + (d + 1) * kKeyTile + v * S::width);
      for (int i = 0; i < Q; ++i) {
        even[i][v] = S::fma(S::broadcast(q[i][d]), ke, even[i][v]);
        odd[i][v] = S::fma(S::broadcast(q[i][d + 1]), ko, odd[i][v]);
      }
    }
  if (d < hd)
    for (int v = 0; v < V; ++v) {
      const typename S::V ke = S::load(tile + d * kKeyTile + v * S::width);
      for (int i = 0; i < Q; ++i) even[i][v] = S::fma(S::broadcast(q[i][d]), ke, even[i][v]);
    }
  for (int i = 0; i < Q; ++i)
    for (int v = 0; v < V; ++v) S::store(out[i] + offset + v * S::width, S::add(even[i][v], odd[i][v]));
}

template <class S, int Q>
inline void scores_for_queries(const float* const* q, const float* keys, int lo, int hi, int hd,
                               float* const* scores) {
  float partial[Q][kKeyTile];
  float* partial_rows[Q];
  for (int i = 0; i < Q; ++i) partial_rows[i] = partial[i];
  for (int t = lo / kKeyTile; t * kKeyTile < hi; ++t) {
    const int first = t * kKeyTile, a = std::max(lo, first), b = std::min(hi, first + kKeyTile);
    const float* tile = keys + int64_t(first) * hd;
    if (a == first && b == first + kKeyTile) {
      score_tile<S, Q>(q, tile, hd, scores, first - lo);
    } else {  // a tile cut by lo or hi: its lanes in range only
      score_tile<S, Q>(q, tile, hd, partial_rows, 0);
      for (int i = 0; i < Q; ++i) std::copy(partial[i] + (a - first), partial[i] + (b - first), scores[i] + (a - lo));
    }
  }
}

template <class S>
void attention_scores(const float* const* q, int nq, const float* keys, int lo, int hi, int hd, float* const* scores) {
  constexpr int kQ = kQueries<S>;
  int i = 0;
  for (; i + kQ <= nq; i += kQ) scores_for_queries<S, kQ>(q + i, keys, lo, hi, hd, scores + i);
  for (; i < nq; ++i) scores_for_queries<S, 1>(q + i, keys, lo, hi, hd, scores + i);
}

// P V for Q queries and V vectors of output dimensions from dimension d0: one chain per lane.
template <class S, int Q, int V>
inline void values_chunk(const float* const* p, const float* values, int n, int hd, int d0, float* const* out) {
  typename S::V acc[Q][V];
  for (int i = 0; i < Q; ++i)
    for (int v = 0; v < V; ++v) acc[i][v] = S::load(out[i] + d0 + v * S::width);
  for (int j = 0; j < n; ++j)
    for (int v = 0; v < V; ++v) {
      const typename S::V vj = S::load(values + int64_t(j) * hd + d0 + v * S::width);
      for (int i = 0; i < Q; ++i) acc[i][v] = S::fma(S::broadcast(p[i][j]), vj, acc[i][v]);
    }
  for (int i = 0; i < Q; ++i)
    for (int v = 0; v < V; ++v) S::store(out[i] + d0 + v * S::width, acc[i][v]);
}

template <class S, int Q>
inline void values_for_queries(const float* const* p, const float* values, int n, int hd, float* const* out) {
  constexpr int kV = 4;  // vectors of output dimensions per pass: Q * kV accumulators
  int d = 0;
  for (; d + kV * S::width <= hd; d += kV * S::width) values_chunk<S, Q, kV>(p, values, n, hd, d, out);
  switch ((hd - d) / S::width) {
    case 3: values_chunk<S, Q, 3>(p, values, n, hd, d, out); break;
    case 2: values_chunk<S, Q, 2>(p, values, n, hd, d, out); break;
    case 1: values_chunk<S, Q, 1>(p, values, n, hd, d, out); break;
    default: break;
  }
  for (d += (hd - d) / S::width * S::width; d < hd; ++d)
    for (int i = 0; i < Q; ++i) {
      float a = out[i][d];
      for (int j = 0; j < n; ++j) a = S::fma1(p[i][j], values[int64_t(j) * hd + d], a);
      out[i][d] = a;
    }
}

template <class S>
void attention_values(const float* const* p, int nq, const float* values, int n, int hd, float* const* out) {
  constexpr int kQ = kQueries<S>;
  int i = 0;
  for (; i + kQ <= nq; i += kQ) values_for_queries<S, kQ>(p + i, values, n, hd, out + i);
  for (; i < nq; ++i) values_for_queries<S, 1>(p + i, values, n, hd, out + i);
}

// attention_values over the first vd dimensions of keys in their tiles (latent attention's c):
// the range's positions copied out as rows [position][vd], then the same products as
// attention_values, so the same bits. A whole tile's 16 x 16 blocks go through a small array
// (read along the tile's dimension rows, written along the positions' rows), which the compiler
// turns into vector shuffles: 3-4 times faster than copying element by element with AVX-512.
template <class S>
void attention_values_in_keys(const float* const* p, int nq, const float* keys, int lo, int hi, int hd, int vd,
                              float* const* out) {
  thread_local std::vector<float> rows;  // per thread, kept between calls
  rows.resize(size_t(hi - lo) * vd);
  for (int first = lo / kKeyTile * kKeyTile; first < hi; first += kKeyTile) {
    const int a = std::max(lo, first), b = std::min(hi, first + kKeyTile);
    const float* tile = keys + int64_t(first) * hd;
    int d0 = 0;
    if (a == first && b == first + kKeyTile)
      for (; d0 + kKeyTile <= vd; d0 += kKeyTile) {
        float block[kKeyTile][kKeyTile];
        for (int d = 0; d < kKeyTile; ++d)
          for (int j = 0; j < kKeyTile; ++j) block[j][d] = tile[int64_t(d0 + d) * kKeyTile + j];
        for (int j = 0; j < kKeyTile; ++j)
          std::copy_n(block[j], kKeyTile, rows.data() + size_t(first + j - lo) * vd + d0);
      }
    for (int j = a; j < b; ++j)  // a cut tile, or the dimensions past the last whole block
      for (int d = d0; d < vd; ++d) rows[size_t(j - lo) * vd + d] = tile[int64_t(d) * kKeyTile + (j - first)];
  }
  attention_values<S>(p, nq, rows.data(), hi - lo, vd, out);
}

// e^x in each lane. x = n ln2 + r with n = round(x / ln2) (ties to even, by adding and
// subtracting 1.5 * 2^23) and |r| <= ln2 / 2 (two fused steps with ln2 split in a short high part,
// n * kLn2Hi exact, and the rest); e^r by its Taylor polynomial to r^7 (the first term left out is
// under 0.1 ulp) in Horner's fused steps; then times 2^n1 (exact) and 2^n2 (rounded once, into the
// subnormals where the result lies there), n1 + n2 = n, so that neither power leaves the normal
// range. x is first clamped to [-150, 89]: past those, e^x is 0 or inf in floats (and NaN passes
// the clamp, S::max and S::min returning their second operand then). Every step is one IEEE
// operation (S::fused_fma fuses in the portable code too), so every ISA gives the same bits.
inline constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
template <class S>
inline typename S::V exp_lanes(typename S::V x) {
  using V = typename S::V;
  const V round = S::broadcast(12582912.0f);  // 1.5 * 2^23: x + round - round is x to an integer
  x = S::min(S::broadcast(89.0f), S::max(S::broadcast(-150.0f), x));
  const V n = S::sub(S::add(S::mul(x, S::broadcast(kLog2e)), round), round);
  V r = S::fused_fma(n, S::broadcast(-kLn2Hi), x);
  r = S::fused_fma(n, S::broadcast(-kLn2Lo), r);
  V p = S::broadcast(1.0f / 5040.0f);
  for (const float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
    p = S::fused_fma(p, r, S::broadcast(c));
  const V n1 = S::sub(S::add(S::mul(n, S::broadcast(0.5f)), round), round);
  return S::mul(S::mul(p, S::pow2(n1)), S::pow2(S::sub(n, n1)));
}

template <class S>
void exp_floats(const float* x, int n, float* out) {
  constexpr int W = S::width;
  int i = 0;
  for (; i + W <= n; i += W) S::store(out + i, exp_lanes<S>(S::load(x + i)));
  if (i < n) {  // the tail through a whole vector: lanes are independent
    float in[W], e[W];
    std::fill_n(in, W, 0.0f);
    std::copy(x + i, x + n, in);
    S::store(e, exp_lanes<S>(S::load(in)));
    std::copy(e, e + (n - i), out + i);
  }
}

// Three passes over the row: scale and maximum; exponentials and their sum in 16 lanes (a whole
// vector per 16 elements on AVX-512, two on AVX2, 16 scalars in the portable code; the tail padded
// with -inf, whose e^ is +0 and leaves a lane as it was); the 16 lanes summed in a fixed tree.
template <class S>
float attention_softmax(float* row, int n, float scale) {
  constexpr int W = S::width, kLanes = 16, NV = kLanes / W;
  static_assert(kLanes % W == 0);
  const typename S::V s = S::broadcast(scale);
  typename S::V mv = S::broadcast(-INFINITY);
  int j = 0;
  for (; j + W <= n; j += W) {
    const typename S::V v = S::mul(S::load(row + j), s);
    S::store(row + j, v);
    mv = S::max(mv, v);
  }
  float lanes[kLanes];
  S::store(lanes, mv);
  float m = -INFINITY;
  for (int k = 0; k < W; ++k) m = std::max(m, lanes[k]);
  for (; j < n; ++j) m = std::max(m, row[j] *= scale);
  const typename S::V mb = S::broadcast(m);
  typename S::V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = S::zero();
  const auto exps = [&](float* at) {
    for (int v = 0; v < NV; ++v) {
      const typename S::V e = exp_lanes<S>(S::sub(S::load(at + v * W), mb));
      S::store(at + v * W, e);
      acc[v] = S::add(acc[v], e);
    }
  };
  for (j = 0; j + kLanes <= n; j += kLanes) exps(row + j);
  if (j < n) {
    float tail[kLanes];
    std::fill_n(tail, kLanes, -INFINITY);
    std::copy(row + j, row + n, tail);
    exps(tail);
    std::copy(tail, tail + (n - j), row + j);
  }
  for (int v = 0; v < NV; ++v) S::store(lanes + v * W, acc[v]);
  for (int h = kLanes / 2; h >= 1; h /= 2)
    for (int k = 0; k < h; ++k) lanes[k] += lanes[k + h];
  return lanes[0];
}

// S: the float lane above; L: the integer lane of quant_matmul_impl.hpp.
template <class S, class L>
KernelTable make_table(Isa isa) {
  return KernelTable{isa, &matmul_rows<S>, &bf16_x_layout<S>, &quant_impl::quant_matmul_rows<L>, &L::quantize_activations, &dot<S>, &axpy<S>,
                     &attention_scores<S>, &attention_values<S>, &attention_values_in_keys<S>, &exp_floats<S>, &attention_softmax<S>};
}

}  // namespace
}  // namespace impl
}  // namespace crossmoe::kernels
