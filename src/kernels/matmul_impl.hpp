#pragma once
// The matmul / dot / axpy bodies, written once over a SIMD "lane" type S. Each ISA's .cpp file
// includes this with its own S, compiled with that ISA's flags.
//   S::V            vector of S::width floats
//   S::zero(), S::load(const float*), S::store(float*, V), S::fma(a, b, acc), S::sum(V)
//   S::widen<D>(const Stored<D>*)   load S::width stored elements as floats
//   S::widen_bf16_pair(const uint16_t*, V& even, V& odd)   load 2 * S::width bf16 elements: even
//                   gets elements 0, 2, 4, ..., odd gets 1, 3, 5, ... (a shift and a mask, no shuffle)
//   S::fma1(a, b, acc)   a * b + acc on single floats, rounded as S::fma rounds each lane
//   S::decode_rows  rows per tile for one token
//   S::tile_rows<D>, S::tile_tokens<D>   rows x tokens per register tile for several tokens
//                   against weights of dtype D (as many accumulators as the registers hold
//                   beside the weight vectors, without spilling)
#include <algorithm>

#include <bit>

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
// prefill chunk) do the same on the first pass over a block of rows (PREFETCH); later passes
// over the same rows find them in cache.
// ROWS weight rows times TOK token vectors: every weight vector loaded (and widened) once feeds
// TOK FMAs, every token vector loaded once feeds ROWS FMAs. Every (row, token) pair is summed in
// the same order whatever the tile, so a token's result does not depend on the tokens beside it:
// one vector accumulator over the whole chunks, its lanes summed by S::sum, then the columns
// after the last whole chunk one by one with S::fma1, an explicit fused multiply-add (a plain
// `s += w * x` there would be fused or not at the compiler's choice, per tile shape).
// bf16 rows are read 2 * S::width at a time, split into even and odd elements; x then comes in
// the layout of bf16_x_layout (each such chunk's even columns, then its odd ones).
template <class S, DType D, int ROWS, int TOK, bool PREFETCH>
inline void tile(const Stored<D>* w, int64_t ld, const float* x, int64_t cols, int64_t ldx, float* y,
                 int64_t ldy) {
  typename S::V acc[ROWS][TOK];
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) acc[r][t] = S::zero();
  int64_t c = 0;
  if constexpr (D == DType::BF16) {
    for (; c + 2 * S::width <= cols; c += 2 * S::width) {
      for (int r = 0; r < ROWS; ++r) {
        typename S::V we, wo;
        if constexpr (PREFETCH) __builtin_prefetch(w + (r + ROWS) * ld + c);
        S::widen_bf16_pair(w + r * ld + c, we, wo);
        for (int t = 0; t < TOK; ++t)
          acc[r][t] = S::fma(wo, S::load(x + t * ldx + c + S::width), S::fma(we, S::load(x + t * ldx + c), acc[r][t]));
      }
    }
  }
  for (; D != DType::BF16 && c + S::width <= cols; c += S::width) {
    typename S::V xv[TOK];
    for (int t = 0; t < TOK; ++t) xv[t] = S::load(x + t * ldx + c);
    for (int r = 0; r < ROWS; ++r) {
      if constexpr (PREFETCH) __builtin_prefetch(w + (r + ROWS) * ld + c);
      const typename S::V wv = S::template widen<D>(w + r * ld + c);
      for (int t = 0; t < TOK; ++t) acc[r][t] = S::fma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) {
      float s = S::sum(acc[r][t]);
      for (int64_t k = c; k < cols; ++k) s = S::fma1(scalar_widen<D>(w[r * ld + k]), x[t * ldx + k], s);
      y[t * ldy + r] = s;
    }
}

template <class S, DType D, int ROWS, int TOK, bool PREFETCH>
inline void rows_for_tokens(const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int64_t ldy, float* y,
                            int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + ROWS <= r1; r += ROWS) tile<S, D, ROWS, TOK, PREFETCH>(w + r * ld, ld, x, cols, cols, y + r, ldy);
  for (; r < r1; ++r) tile<S, D, 1, TOK, PREFETCH>(w + r * ld, ld, x, cols, cols, y + r, ldy);
}

// rows_for_tokens for n tokens, 1 <= n <= TOK: a tile of exactly n tokens.
template <class S, DType D, int ROWS, int TOK, bool PREFETCH>
inline void rows_for_n_tokens(int n, const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int64_t ldy,
                              float* y, int64_t r0, int64_t r1) {
  if constexpr (TOK > 1)
    if (n < TOK) return rows_for_n_tokens<S, D, ROWS, TOK - 1, PREFETCH>(n, w, ld, cols, x, ldy, y, r0, r1);
  rows_for_tokens<S, D, ROWS, TOK, PREFETCH>(w, ld, cols, x, ldy, y, r0, r1);
}

// One token runs tiles of S::decode_rows rows (it reads every weight once: memory-bound). More
// tokens run in groups as even as possible of at most S::tile_tokens<D>, each group over rows
// in tiles of S::tile_rows<D>, each group's token vectors in L1 through its pass. Up to
// kRowBlockedTokens tokens (a batched decode step), every group goes over a block of kRowBlock
// rows before the next block: the block comes from memory once, for the first group, and from
// L2 for the others (groups over all of [r0, r1) found a large matrix's rows gone from L2 by the
// second group: 1024 x 2816 bf16 at 16 tokens, 1.2-1.3x faster per CPU second this way). More
// tokens (prefill) keep whole passes over [r0, r1). The order of the sums is the same either way.
inline constexpr int kRowBlockedTokens = 32;
inline constexpr int64_t kRowBlock = 64;
template <class S, DType D>
void matmul_rows_typed(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const Stored<D>*>(m.data);
  const int64_t cols = m.cols, ld = m.row_stride(), ldy = m.rows;
  if (tokens == 1) return rows_for_tokens<S, D, S::decode_rows, 1, true>(w, ld, cols, x, ldy, y, r0, r1);
  constexpr int kTok = S::template tile_tokens<D>, kRows = S::template tile_rows<D>;
  const int groups = (tokens + kTok - 1) / kTok;
  const int64_t block = tokens <= kRowBlockedTokens ? kRowBlock : r1 - r0;
  for (int64_t b0 = r0; b0 < r1; b0 += block) {
    const int64_t b1 = std::min(r1, b0 + block);
    for (int g = 0, t = 0; g < groups; ++g) {
      const int n = (tokens - t) / (groups - g);
      if (g == 0)
        rows_for_n_tokens<S, D, kRows, kTok, true>(n, w, ld, cols, x + t * cols, ldy, y + t * ldy, b0, b1);
      else
        rows_for_n_tokens<S, D, kRows, kTok, false>(n, w, ld, cols, x + t * cols, ldy, y + t * ldy, b0, b1);
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

// The lane sums of 16 accumulators, each as S::sum gives it alone: S::sum16 where the lane type
// has one (the same pairs added in the same tree, all 16 at once), else one S::sum each.
template <class S>
inline void sum16(const typename S::V* acc, float* out) {
  if constexpr (requires { S::sum16(acc, out); })
    S::sum16(acc, out);
  else
    for (int k = 0; k < 16; ++k) out[k] = S::sum(acc[k]);
}

// One query's attention against one block of n cached positions, keys and values both
// [n][hd]: scores[j] = q . keys[j] (dot's order and bits), and out += sum_j p[j] * values[j], j in
// order, one fused multiply-add chain per output lane. Each query's sums are its own, so a token's
// attention is the same bits whatever the other queries of its step, alone or in a batch,
// in a prefill chunk or decoded one at a time. (A matmul call per block and head costs more in
// bookkeeping than the few hundred multiply-adds of a decode query; the transposed values it
// read summed every output dimension across lanes, and a partial block one scalar at a time.)
// Scores go 16 positions at a time: dot's two accumulators per position, then their lane sums
// 16 at once (sum16), instead of a call and two dependent reductions per position, which left a
// decode step's attention latency-bound (a quarter of an MoE Q4_K token's time at 800 positions).
template <class S>
void attention_scores(const float* q, const float* keys, int n, int hd, float* scores) {
  constexpr int W = S::width;
  int j = 0;
  if (hd % W == 0) {
    for (; j + 16 <= n; j += 16) {
      typename S::V even[16], odd[16];  // dot's acc0 (chunks 0, 2, 4, ...) and acc1 (1, 3, 5, ...)
      for (int k0 = 0; k0 < 16; k0 += 4) {  // 4 positions side by side: 8 independent chains
        const float* key = keys + int64_t(j + k0) * hd;
        typename S::V a0[4], a1[4];
        for (int k = 0; k < 4; ++k) a0[k] = a1[k] = S::zero();
        int i = 0;
        for (; i + 2 * W <= hd; i += 2 * W) {
          const typename S::V qe = S::load(q + i), qo = S::load(q + i + W);
          // The positions 16 ahead, at the same columns: a decode step's first query head reads
          // the keys from memory, in pieces too short for the hardware prefetcher to pick up.
          for (int k = 0; k < 4; ++k) __builtin_prefetch(key + (16 + k) * hd + i);
          for (int k = 0; k < 4; ++k) {
            a0[k] = S::fma(qe, S::load(key + k * hd + i), a0[k]);
            a1[k] = S::fma(qo, S::load(key + k * hd + i + W), a1[k]);
          }
        }
        if (i < hd)
          for (int k = 0; k < 4; ++k) a0[k] = S::fma(S::load(q + i), S::load(key + k * hd + i), a0[k]);
        for (int k = 0; k < 4; ++k) even[k0 + k] = a0[k], odd[k0 + k] = a1[k];
      }
      float s0[16], s1[16];
      sum16<S>(even, s0);
      sum16<S>(odd, s1);
      for (int k = 0; k < 16; ++k) scores[j + k] = s0[k] + s1[k];
    }
  }
  for (; j < n; ++j) scores[j] = dot<S>(q, keys + int64_t(j) * hd, hd);
}

// NV vectors of out, from column i, held in registers through all n positions: each value row is
// read once per group of NV vectors (8: once per query for a head of 128 on AVX-512), and the NV
// chains are independent, where two chains at a time waited on each other's latency.
template <class S, int NV>
inline void attention_values_vectors(const float* p, const float* values, int n, int hd, float* out) {
  typename S::V a[NV];
  for (int v = 0; v < NV; ++v) a[v] = S::load(out + v * S::width);
  for (int j = 0; j < n; ++j) {
    const typename S::V pj = S::broadcast(p[j]);
    for (int v = 0; v < NV; ++v) a[v] = S::fma(pj, S::load(values + int64_t(j) * hd + v * S::width), a[v]);
  }
  for (int v = 0; v < NV; ++v) S::store(out + v * S::width, a[v]);
}

template <class S>
void attention_values(const float* p, const float* values, int n, int hd, float* out) {
  constexpr int W = S::width;
  int i = 0;
  for (; i + 8 * W <= hd; i += 8 * W) attention_values_vectors<S, 8>(p, values + i, n, hd, out + i);
  if (i + 4 * W <= hd) attention_values_vectors<S, 4>(p, values + i, n, hd, out + i), i += 4 * W;
  if (i + 2 * W <= hd) attention_values_vectors<S, 2>(p, values + i, n, hd, out + i), i += 2 * W;
  if (i + W <= hd) attention_values_vectors<S, 1>(p, values + i, n, hd, out + i), i += W;
  for (; i < hd; ++i) {
    float a = out[i];
    for (int j = 0; j < n; ++j) a = S::fma1(p[j], values[int64_t(j) * hd + i], a);
    out[i] = a;
  }
}

// S: the float lane above; L: the integer lane of quant_matmul_impl.hpp.
template <class S, class L>
KernelTable make_table(Isa isa) {
  return KernelTable{isa, &matmul_rows<S>, &bf16_x_layout<S>, &quant_impl::quant_matmul_rows<L>, &L::quantize_activations, &dot<S>, &axpy<S>,
                     &attention_scores<S>, &attention_values<S>};
}

}  // namespace
}  // namespace impl
}  // namespace crossmoe::kernels
