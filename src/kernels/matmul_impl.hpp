#pragma once
// The matmul / dot / axpy bodies, written once over a SIMD "lane" type S. Each ISA's .cpp file
// includes this with its own S, compiled with that ISA's flags.
//   S::V            vector of S::width floats
//   S::zero(), S::load(const float*), S::store(float*, V), S::fma(a, b, acc), S::sum(V)
//   S::widen<D>(const Stored<D>*)   load S::width stored elements as floats
//   S::widen_bf16_pair(const uint16_t*, V& even, V& odd)   load 2 * S::width bf16 elements: even
//                   gets elements 0, 2, 4, ..., odd gets 1, 3, 5, ... (a shift and a mask, no shuffle)
//   S::tile_tokens  tokens per register tile (as many as the register file holds without spilling)
//   S::gemm_rows, S::gemm_tokens   the register tile of the prefill kernel (gemm_rows below):
//                   rows x tokens accumulators, tokens vectors of x and one of weights
#include <algorithm>
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

// ROWS weight rows times TOK token vectors: every weight vector loaded once feeds TOK FMAs,
// every token vector loaded once feeds ROWS FMAs. Every (row, token) pair is summed in the same
// order whatever the tile, so a token's result does not depend on the tokens beside it.
// bf16 rows are read 2 * S::width at a time, split into even and odd elements; x then comes in
// the layout of bf16_x_layout (each such chunk's even columns, then its odd ones).
template <class S, DType D, int ROWS, int TOK>
inline void tile(const Stored<D>* w, int64_t ld, const float* x, int64_t cols, int64_t ldx, float* y,
                 int64_t ldy) {
  typename S::V acc[ROWS][TOK];
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) acc[r][t] = S::zero();
  int64_t c = 0;
  if constexpr (D == DType::BF16) {
    for (; c + 2 * S::width <= cols; c += 2 * S::width) {
      typename S::V even[TOK], odd[TOK];
      for (int t = 0; t < TOK; ++t) even[t] = S::load(x + t * ldx + c), odd[t] = S::load(x + t * ldx + c + S::width);
      for (int r = 0; r < ROWS; ++r) {
        typename S::V we, wo;
        S::widen_bf16_pair(w + r * ld + c, we, wo);
        for (int t = 0; t < TOK; ++t) acc[r][t] = S::fma(wo, odd[t], S::fma(we, even[t], acc[r][t]));
      }
    }
  }
  for (; D != DType::BF16 && c + S::width <= cols; c += S::width) {
    typename S::V xv[TOK];
    for (int t = 0; t < TOK; ++t) xv[t] = S::load(x + t * ldx + c);
    for (int r = 0; r < ROWS; ++r) {
      const typename S::V wv = S::template widen<D>(w + r * ld + c);
      for (int t = 0; t < TOK; ++t) acc[r][t] = S::fma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) {
      float s = S::sum(acc[r][t]);
      for (int64_t k = c; k < cols; ++k) s += scalar_widen<D>(w[r * ld + k]) * x[t * ldx + k];
      y[t * ldy + r] = s;
    }
}

template <class S, DType D, int TOK>
inline void rows_for_tokens(const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int64_t ldy, float* y,
                            int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) tile<S, D, 4, TOK>(w + r * ld, ld, x, cols, cols, y + r, ldy);
  for (; r < r1; ++r) tile<S, D, 1, TOK>(w + r * ld, ld, x, cols, cols, y + r, ldy);
}

// The prefill kernel (many tokens): blocks of up to kPanelRows weight rows are widened to f32
// once per kPanelCols columns into a panel that stays in L1, and every token of a block of
// kBlockTokens reads it from there, S::gemm_rows rows x S::gemm_tokens tokens at a time with the
// token vectors in registers. Each (row, token) pair keeps its own vector accumulator, parked in
// `partial` between column blocks, and adds its products in exactly tile's order (vectors left
// to right; bf16 as even then odd elements), then the same horizontal sum and scalar tail: a
// token gets the same bits here as alone (decode) or in a small batch.
// Below kGemmMinTokens tokens (decode, small batches) widening the panel would cost about as
// much as the products, and tile reads the stored rows directly.
constexpr int kGemmMinTokens = 8;
constexpr int64_t kPanelRows = 16;
constexpr int64_t kPanelCols = 256;  // a multiple of every 2 * S::width

template <class S> constexpr int kBlockTokens = 16 * S::gemm_tokens;

template <class S, int ROWS, int TOK>
inline void gemm_tile(const float* panel, const float* x, int64_t ldx, int64_t n, bool first, float* partial) {
  constexpr int64_t W = S::width, kRowStep = kBlockTokens<S> * W;
  typename S::V acc[ROWS][TOK];
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) acc[r][t] = first ? S::zero() : S::load(partial + r * kRowStep + t * W);
  for (int64_t c = 0; c < n; c += W) {
    typename S::V xv[TOK];
    for (int t = 0; t < TOK; ++t) xv[t] = S::load(x + t * ldx + c);
    for (int r = 0; r < ROWS; ++r) {
      const typename S::V wv = S::load(panel + r * kPanelCols + c);
      for (int t = 0; t < TOK; ++t) acc[r][t] = S::fma(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int t = 0; t < TOK; ++t) S::store(partial + r * kRowStep + t * W, acc[r][t]);
}

template <class S, int TOK>
inline void gemm_tokens(const float* panel, int64_t rows, const float* x, int64_t ldx, int64_t n, bool first,
                        float* partial) {
  constexpr int64_t kRowStep = kBlockTokens<S> * S::width;
  int64_t r = 0;
  for (; r + S::gemm_rows <= rows; r += S::gemm_rows)
    gemm_tile<S, S::gemm_rows, TOK>(panel + r * kPanelCols, x, ldx, n, first, partial + r * kRowStep);
  for (; r < rows; ++r) gemm_tile<S, 1, TOK>(panel + r * kPanelCols, x, ldx, n, first, partial + r * kRowStep);
}

template <class S, DType D>
void gemm_rows(const Stored<D>* w, int64_t ld, int64_t cols, const float* x, int tokens, float* y, int64_t ldy,
               int64_t r0, int64_t r1) {
  constexpr int64_t W = S::width, kStep = D == DType::BF16 ? 2 * W : W;
  constexpr int kTokens = kBlockTokens<S>;
  const int64_t vec_end = cols - cols % kStep;
  thread_local std::vector<float> panel_buffer, partial_buffer;
  panel_buffer.resize(size_t(kPanelRows * kPanelCols));
  partial_buffer.resize(size_t(kPanelRows * kTokens * W));
  float* const panel = panel_buffer.data();
  float* const partial = partial_buffer.data();
  for (int64_t rp = r0; rp < r1; rp += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, r1 - rp);
    for (int tb = 0; tb < tokens; tb += kTokens) {
      const int nt = std::min(kTokens, tokens - tb);
      const float* xb = x + int64_t(tb) * cols;
      for (int64_t kc = 0; kc < vec_end; kc += kPanelCols) {
        const int64_t n = std::min(kPanelCols, vec_end - kc);
        for (int64_t r = 0; r < rows; ++r) {
          const Stored<D>* src = w + (rp + r) * ld + kc;
          float* dst = panel + r * kPanelCols;
          for (int64_t c = 0; c < n; c += kStep) {
            if constexpr (D == DType::BF16) {
              typename S::V even, odd;
              S::widen_bf16_pair(src + c, even, odd);
              S::store(dst + c, even);
              S::store(dst + c + W, odd);
            } else {
              S::store(dst + c, S::template widen<D>(src + c));
            }
          }
        }
        int t = 0;
        for (; t + S::gemm_tokens <= nt; t += S::gemm_tokens)
          gemm_tokens<S, S::gemm_tokens>(panel, rows, xb + t * cols + kc, cols, n, kc == 0, partial + t * W);
        for (; t < nt; ++t) gemm_tokens<S, 1>(panel, rows, xb + t * cols + kc, cols, n, kc == 0, partial + t * W);
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int t = 0; t < nt; ++t) {
          float s = vec_end > 0 ? S::sum(S::load(partial + (r * kTokens + t) * W)) : S::sum(S::zero());
          for (int64_t k = vec_end; k < cols; ++k) s += scalar_widen<D>(w[(rp + r) * ld + k]) * xb[t * cols + k];
          y[int64_t(tb + t) * ldy + rp + r] = s;
        }
    }
  }
}

template <class S, DType D>
void matmul_rows_typed(const Matrix& m, const float* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const auto* w = static_cast<const Stored<D>*>(m.data);
  const int64_t cols = m.cols, ld = m.row_stride(), ldy = m.rows;
  if (tokens >= kGemmMinTokens) return gemm_rows<S, D>(w, ld, cols, x, tokens, y, ldy, r0, r1);
  constexpr int kTok = S::tile_tokens;
  int t = 0;
  for (; t + kTok <= tokens; t += kTok) rows_for_tokens<S, D, kTok>(w, ld, cols, x + t * cols, ldy, y + t * ldy, r0, r1);
  for (; t < tokens; ++t) rows_for_tokens<S, D, 1>(w, ld, cols, x + t * cols, ldy, y + t * ldy, r0, r1);
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

// S: the float lane above; L: the integer lane of quant_matmul_impl.hpp.
template <class S, class L>
KernelTable make_table(Isa isa) {
  return KernelTable{isa, &matmul_rows<S>, &bf16_x_layout<S>, &quant_impl::quant_matmul_rows<L>, &dot<S>, &axpy<S>};
}

}  // namespace
}  // namespace impl
}  // namespace crossmoe::kernels
