#pragma once
// Products of block-quantized weight rows (every type of util/quant.hpp) with quantized activations, written once over an
// integer "lane" type L. Each ISA's .cpp file includes this with its own L, compiled with its flags.
//   L::Acc                      float accumulators;  L::Int  integer accumulators
//   L::zero(), L::sum(Acc), L::int_zero()
//   L::half(const uint8_t*)     an fp16 field as float
//   L::Scale, L::splat(float)   a weight block's step, ready for every lane
//   L::madd_q8(w, a, dw, da, acc)  acc + (dw * *da) * sum_i w[i] * a[i] over 32 int8 pairs
//   L::small_block_sums<kType, T>(w, x, blocks, sums)  a Q4_0 / Q5_0 / IQ4_NL block (at w) unpacked once to
//       Q8_0's int8 values (quant::small_block_values; Q4_1 / Q5_1: q as stored), then per token
//       (activation block x[t * blocks]) Q8_0's dot, the exact int32 sums[t] = sum_i w[i] * a[i]
//   L::madd_q4(q, a_lo, a_hi, s_lo, s_hi, iacc)
//       32 bytes of nibbles, integer scales s: iacc + s_lo * sum_i (q[i] & 15) * a_lo[i]
//                                                   + s_hi * sum_i (q[i] >> 4) * a_hi[i]
//   L::madd_mins(m, s)          sum_j m[j] * s[j] over 8 bytes m and 8 int16 s, as an L::Int
//   L::madd_int(iacc, scale, acc)            acc + scale * iacc
//   L::q6_k_sums<T>(w, x, blocks, sums)  a Q6_K super-block (210 bytes at w) times T tokens' 8
//       activation blocks (token t's at x + t * blocks): sums[t] = sum_j sc[j] * sum_i (q_i - 32) a_i,
//       the exact integer; the tile then takes acc = fma(float(sums[t]), d * a.d, acc) in a scalar
//       per (row, token), super-block after super-block: the same bits in every ISA for every T.
//   L::low_bit_k_sums<T, kType>(w, x, half_sums, blocks, dots, mins)  a Q2_K or Q3_K super-block
//       (at w) times T tokens' 8 activation blocks, in quant::low_bit_k_values's terms: dots[t] =
//       sum_j scale[j] * sum_i q_i a_i and mins[t] = sum_j min[j] * sum_i a_i over the sub-blocks j
//       of 16 values, the sums of a read from half_sums (activation_half_sums: token t's 16 at
//       half_sums + 2 * t * blocks), exact (Q3_K: dots[t] - mins[t] is what counts, which a lane may
//       return as that and 0).
//   L::q5_k_sums<T>(w, sc, x, blocks, sums)  a Q5_K super-block (176 bytes at w, its 8 scales
//       unpacked in sc) times T tokens' 8 activation blocks: sums[t] = sum_j sc[j] * sum_i q_i a_i,
//       the exact integer; the tile adds the min term's integer sum_j m[j] * a_j.sum and takes
//       Q4_K's two float steps in a scalar per (row, token): the same bits in every ISA for every T.
//   L::q8_0_x8<T>(g, x, blocks, y, ldy), L::q4_k_x8<T>(g, x, sums, blocks, y, ldy)
//       a group of 8 rows in the Interleaved8 layout (util/quant.hpp) times T tokens: y[t * ldy + r].
//       Each (row, token) gets its block's (Q8_0) or super-block's (Q4_K) exact integer sums, then
//       acc = fma(float(sum), d * a.d, acc) (Q4_K: then acc = fma(-float(min sum), dmin * a.d, acc))
//       in block order, in every lane type and for every T: the same bits in every ISA.
//   L::q8_0_x8<T, DType::Q4_0, Q5_0, Q4_1, Q5_1 or IQ4_NL>(...): the same for those types' groups, each block's q
//       unpacked to Q8_0's int8 values (q - 8, q - 16, IQ4_NL's table; Q4_1 / Q5_1: q as stored): small_block_sums's exact dot and
//       small_block_tile's float steps (Q4_1 / Q5_1: then the min's), the rows' bits.
//   L::q4_k_x8<T, DType::Q5_K>(...): the same for Q5_K's groups (Q4_K's bytes and a span of top
//       bits): the exact integers of q5_k_sums and the min terms, then Q4_K's two float steps, which
//       are q5_k_tile's: the rows' bits.
//   L::q6_k_x8<T>(g, x, offsets, half_sums, blocks, y, ldy): the same for Q6_K, whose exact integer per
//       (row, token, super-block) is q6_k_sums's, then acc = fma(float(sum), d * a.d, acc): the rows'
//       bits. Optionally (SubBlockOffsets) L::sub_block_offsets<32>(x, n, offsets) first writes 4
//       int32 per activation block, the -32 sum_i a_i of the q - 32 in a form of the lane's
//       choosing, once per turn of tokens over a call's rows (null where the lane has none).
//   L::q6_k_x8<T, DType::Q3_K>(...): the same for Q3_K's groups (offsets sub_block_offsets<4>):
//       per (row, token, super-block) the exact sum_j (sc[j] - 32) sum_i (q_i - 4) a_i, which is
//       low_bit_k_sums's dots - mins, then low_bit_k_tile's float step: the rows' bits.
//   L::iq4_xs_x8<T>(g, x, blocks, y, ldy): the same for IQ4_XS's groups: per sub-block, the exact
//       integer of its IQ4_NL values against its activation block, then iq4_xs_tile's float step:
//       the rows' bits (with PairedGroups, L::iq4_xs_x16<T> too, on two groups as q8_0_x16).
//   L::q6_k_x8<T, DType::Q2_K>(...): the same for Q2_K's groups (no offsets): low_bit_k_sums's dots
//       and mins (the mins from half_sums, token t's at half_sums + 2 * t * blocks), then
//       low_bit_k_tile's two float steps: the rows' bits.
//   L::codebook_sums<kType, T>(w, x, block_sums, blocks, sums)  a codebook or ternary super-block (at
//       w) times T tokens' 8 activation blocks (their int16 sums at block_sums + t * blocks, which
//       IQ1_S and the ternary types read): sums[t] = sum_j scale[j] sum_i q_i a_i in
//       quant::codebook_block_values's terms, exact; the tile then takes one float step per (row,
//       token, super-block) in a scalar: the same bits in every ISA for every T.
//   Optionally (PairedGroups): L::x16_tokens,
//       L::q8_0_x16<T>(g, group_bytes, x, blocks, y, ldy, prefetch),
//       L::q4_k_x16<T, D>(g, group_bytes, x, sums, blocks, y, ldy, prefetch) (D: Q4_K or Q5_K): two groups (16 rows, the
//       second group_bytes after g) times T tokens (T = 1: the last of several), under the same
//       contract; with prefetch, each block's lines of the next two groups are asked for as the
//       tile goes.
// Integer sums are exact in every lane type, so ISAs differ only in the order of float additions.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.hpp"
#include "util/quant.hpp"
#include "util/round_up.hpp"

// Internal linkage on purpose (see matmul_impl.hpp).
namespace crossmoe::kernels {
namespace quant_impl {
namespace {

// R rows x T tokens at a time: every weight block loaded (and its magnitudes, nibbles, scales
// unpacked) serves T tokens, every activation block R rows. Each (row, token) pair runs the same
// operations in the same order whatever the tile, so a token gets the same bits alone (decode)
// or beside others (prefill, batches). Q4_K reads activations with one step a.d per super-block
// (activation_group), so a super-block's product is
//   a.d * (d * sum_j sc[j] * sum(q_j * a_j.q) - dmin * sum_j m[j] * a_j.sum)
// whose two sums over the 8 sub-blocks are integers.
template <class L, int R, int T>
void q8_0_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  typename L::Acc acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = L::zero();
  for (int64_t b = 0; b < blocks; ++b)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b * 34;
      if constexpr (T == 1) __builtin_prefetch(wb + R * row_bytes);
      const typename L::Scale dw = L::splat(L::half(wb));
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        acc[r][t] = L::madd_q8(reinterpret_cast<const int8_t*>(wb + 2), a.q, dw, &a.d, acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = L::sum(acc[r][t]);
}

template <class L, int R, int T>
void q4_k_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, const int16_t* sums, int64_t blocks,
               float* y, int64_t ldy) {
  typename L::Acc acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = L::zero();
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * 144;
      if constexpr (T == 1)
        for (int line = 0; line < 144; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      const float d = L::half(wb), dmin = L::half(wb + 2);
      uint8_t sc[8], m[8];
      quant::q4_k_scales_mins(wb + 4, sc, m);
      for (int t = 0; t < T; ++t) {
        const ActivationBlock* a = x + t * blocks + b;
        typename L::Int dots = L::int_zero();
        for (int p = 0; p < 4; ++p)
          dots = L::madd_q4(wb + 16 + 32 * p, a[2 * p].q, a[2 * p + 1].q, sc[2 * p], sc[2 * p + 1], dots);
        acc[r][t] = L::madd_int(dots, d * a->d, acc[r][t]);
        acc[r][t] = L::madd_int(L::madd_mins(m, sums + t * blocks + b), -(dmin * a->d), acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = L::sum(acc[r][t]);
}

// Q4_0, Q5_0, IQ4_NL or MXFP4 rows (a matrix of fewer than 8 rows, or with a stride, and the rows
// after the last group of 8) against T tokens: each block unpacked once to Q8_0's
// int8 values, then per token Q8_0's exact integer dot (L::small_block_sums) and one float step
// per block, acc = fma(float(dot), d * a.d, acc), in a scalar: the same bits in every ISA for
// every T.
// Q4_1 and Q5_1 (q as stored, value q * d + m) take a second step for the min against the
// activation block's sum: acc = fma(float(a.sum), m * a.d, acc).
template <class L, int R, int T, DType kType>
void small_block_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y,
                      int64_t ldy) {
  constexpr size_t kBlockBytes = quant::small_block_bytes(kType);
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; ++b)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b * kBlockBytes;
      if constexpr (T == 1) __builtin_prefetch(wb + R * row_bytes);
      int32_t sums[T];
      L::template small_block_sums<kType, T>(wb, x + b, blocks, sums);
      const float d = kType == DType::MXFP4 ? quant::mxfp4_step(wb[0]) : L::half(wb);
      for (int t = 0; t < T; ++t) acc[r][t] = std::fma(float(sums[t]), d * x[t * blocks + b].d, acc[r][t]);
      if constexpr (quant::has_block_min(kType)) {
        const float m = L::half(wb + 2);
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + b];
          acc[r][t] = std::fma(float(a.sum), m * a.d, acc[r][t]);
        }
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// IQ4_XS rows against T tokens: each sub-block j taken as an IQ4_NL block (L::small_block_sums on
// its nibbles, which lie where an IQ4_NL block's do after a 2-byte d) whose step is
// float(d * (ls[j] - 32)), against its own activation block: acc = fma(float(dot), step * a.d, acc)
// per sub-block in order, in a scalar: the same bits in every ISA for every T.
template <class L, int R, int T>
void iq4_xs_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * 136;
      if constexpr (T == 1)
        for (int line = 0; line < 136; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      for (int j = 0; j < 8; ++j) {
        int32_t sums[T];
        L::template small_block_sums<DType::IQ4_NL, T>(wb + 6 + 16 * j, x + b + j, blocks, sums);
        const float step = quant::iq4_xs_step(wb, j);
        for (int t = 0; t < T; ++t) acc[r][t] = std::fma(float(sums[t]), step * x[t * blocks + b + j].d, acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// Q6_K rows (a matrix of fewer than 8 rows, or with a stride, and the rows after the last group
// of 8) against T tokens: one exact integer sum per super-block, (row, token) and one float step,
// so T changes nothing in a token's bits, and the interleaved groups give the same bits.
template <class L, int R, int T>
void q6_k_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * 210;
      if constexpr (T == 1)
        for (int line = 0; line < 256; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      int32_t sums[T];
      L::template q6_k_sums<T>(wb, x + b, blocks, sums);
      const float d = L::half(wb + 208);
      for (int t = 0; t < T; ++t) acc[r][t] = std::fma(float(sums[t]), d * x[t * blocks + b].d, acc[r][t]);
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// Q5_K rows (a matrix of fewer than 8 rows, or with a stride, and the rows after the last group
// of 8) against T tokens: per super-block, (row, token), Q4_K's two exact
// integer sums, sum_j sc[j] * sum_i q_i a_i and sum_j m[j] * a_j.sum, then its two float steps.
template <class L, int R, int T>
void q5_k_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * 176;
      if constexpr (T == 1)
        for (int line = 0; line < 192; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      uint8_t sc[8], m[8];
      quant::q4_k_scales_mins(wb + 4, sc, m);
      int32_t sums[T];
      L::template q5_k_sums<T>(wb, sc, x + b, blocks, sums);
      const float d = L::half(wb), dmin = L::half(wb + 2);
      for (int t = 0; t < T; ++t) {
        const ActivationBlock* a = x + t * blocks + b;
        int32_t mins = 0;
        for (int j = 0; j < 8; ++j) mins += int32_t(m[j]) * a[j].sum;
        acc[r][t] = std::fma(float(sums[t]), d * a->d, acc[r][t]);
        acc[r][t] = std::fma(float(mins), -(dmin * a->d), acc[r][t]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// Q2_K or Q3_K rows (a matrix not interleaved, or the rows after its last group of 8) against T tokens: each super-block unpacked once per tile
// (in the lane's registers), then per token the two exact integer sums of L::low_bit_k_sums (the
// min term's from the activations' half sums, made once per call) and
// the float steps in a scalar per (row, token): Q3_K's one, acc = fma(float(dots - mins), d * a.d,
// acc); Q2_K's two, as Q5_K's. The same bits in every ISA for every T.
template <class L, int R, int T, DType kType>
void low_bit_k_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, const int16_t* half_sums,
                    int64_t blocks, float* y, int64_t ldy) {
  constexpr bool kThreeBits = kType == DType::Q3_K;
  constexpr size_t kBlockBytes = kThreeBits ? 110 : 84;
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * kBlockBytes;
      if constexpr (T == 1)
        for (size_t line = 0; line < kBlockBytes + 64; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      int32_t dots[T], mins[T];
      L::template low_bit_k_sums<T, kType>(wb, x + b, half_sums + 2 * b, blocks, dots, mins);
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        if constexpr (kThreeBits) {
          acc[r][t] = std::fma(float(dots[t] - mins[t]), L::half(wb + 108) * a.d, acc[r][t]);
        } else {
          acc[r][t] = std::fma(float(dots[t]), L::half(wb + 80) * a.d, acc[r][t]);
          acc[r][t] = std::fma(float(mins[t]), -(L::half(wb + 82) * a.d), acc[r][t]);
        }
      }
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// Codebook or ternary rows (util/quant.hpp: never interleaved) against T tokens (the activation
// blocks' sums at sums, token t's at sums + t * blocks): per super-block,
// (row, token) the exact integer sum_j scale[j] sum_i q a of L::codebook_sums (the super-block's
// values decoded once per tile, in the lane's registers), then acc = fma(float(sum), D * a.d, acc)
// in a scalar: the same bits in every ISA for every T.
template <class L, int R, int T, DType kType>
void codebook_tile(const uint8_t* w, size_t row_bytes, const ActivationBlock* x, const int16_t* sums, int64_t blocks,
                   float* y, int64_t ldy) {
  const size_t block_bytes = dtype_row_bytes(kType, 256);
  float acc[R][T] = {};
  for (int64_t b = 0; b < blocks; b += 8)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wb = w + r * row_bytes + b / 8 * block_bytes;
      if constexpr (T == 1)
        for (size_t line = 0; line < block_bytes + 64; line += 64) __builtin_prefetch(wb + R * row_bytes + line);
      int32_t dots[T];
      L::template codebook_sums<kType, T>(wb, x + b, sums + b, blocks, dots);
      const uint16_t d = quant::codebook_half_bits<kType>(wb);
      const float factor = L::half(reinterpret_cast<const uint8_t*>(&d)) * quant::codebook_factor_scale<kType>();
      for (int t = 0; t < T; ++t) acc[r][t] = std::fma(float(dots[t]), factor * x[t * blocks + b].d, acc[r][t]);
    }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = acc[r][t];
}

// sums: for Q4_K, the activation blocks' sums as int16 (8 per super-block, as L::madd_mins
// reads them), for Q2_K / Q3_K their half sums (16 per super-block), for the same tokens as x;
// the codebook and ternary types the blocks' sums as Q4_K's; null for Q8_0 and unread for Q5_K's
// rows and Q6_K.
template <class L, int T>
void quant_rows_for_tokens(const Matrix& m, const ActivationBlock* x, const int16_t* sums, float* y, int64_t r0,
                           int64_t r1) {
  // One token (decode) streams its rows one at a time: the rows' data arrive from memory anyway,
  // and a single row's sums keep the Q4_K scale unpacking in registers. Its tiles ask for the
  // next row's blocks ahead (see matmul_impl.hpp's tile).
  constexpr int R = T == 1 ? 1 : 4;
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.row_stride());
  const auto* base = static_cast<const uint8_t*>(m.data);
  int64_t r = r0;
  const auto tile = [&]<int kRows>() {
    const uint8_t* w = base + size_t(r) * row_bytes;
    switch (m.dtype) {
      case DType::Q8_0: return q8_0_tile<L, kRows, T>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q4_K: return q4_k_tile<L, kRows, T>(w, row_bytes, x, sums, blocks, y + r, m.rows);
      case DType::Q5_K: return q5_k_tile<L, kRows, T>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q4_0: return small_block_tile<L, kRows, T, DType::Q4_0>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q5_0: return small_block_tile<L, kRows, T, DType::Q5_0>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q4_1: return small_block_tile<L, kRows, T, DType::Q4_1>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q5_1: return small_block_tile<L, kRows, T, DType::Q5_1>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::IQ4_NL: return small_block_tile<L, kRows, T, DType::IQ4_NL>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::MXFP4: return small_block_tile<L, kRows, T, DType::MXFP4>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::IQ4_XS: return iq4_xs_tile<L, kRows, T>(w, row_bytes, x, blocks, y + r, m.rows);
      case DType::Q2_K: return low_bit_k_tile<L, kRows, T, DType::Q2_K>(w, row_bytes, x, sums, blocks, y + r, m.rows);
      case DType::Q3_K: return low_bit_k_tile<L, kRows, T, DType::Q3_K>(w, row_bytes, x, sums, blocks, y + r, m.rows);
      default:
        if (quant::is_codebook_block(m.dtype))
          return quant::with_codebook_type(m.dtype, [&]<DType D>() {
            codebook_tile<L, kRows, T, D>(w, row_bytes, x, sums, blocks, y + r, m.rows);
          });
        return q6_k_tile<L, kRows, T>(w, row_bytes, x, blocks, y + r, m.rows);
    }
  };
  for (; r + R <= r1; r += R) tile.template operator()<R>();
  for (; r < r1; ++r) tile.template operator()<1>();
}

template <class L>
concept PairedGroups = requires { L::x16_tokens; };
// The tokens of quant_matmul_rows's turns over the rows.
template <class L>
constexpr int turn_tokens() {
  if constexpr (PairedGroups<L>) return L::x16_tokens;
  else return L::x8_tokens;
}

template <class L>
concept SubBlockOffsets =
    requires(const ActivationBlock* x, int32_t* out) { L::template sub_block_offsets<32>(x, int64_t(1), out); };

// Interleaved Q6_K groups (or Q3_K's, on the same tiles) from r0 to r1 against T tokens, in tiles
// of at most L::q6_k_tokens tokens (each group's rows stay in L1 while its tiles read them); the
// lane's offsets of the T tokens' activations (-32 or -4 times their sums over the lanes' values:
// q - 32, q - 4) are made once for all these rows.
// Q2_K's groups too, with no offsets (q unsigned, no bias) and their min terms from half_sums
// (activation_half_sums of x: 2 per block; null for Q6_K and Q3_K).
template <class L, int T, DType D>
void q6_k_groups(const Matrix& m, const ActivationBlock* x, const int16_t* half_sums, float* y, int64_t r0,
                 int64_t r1) {
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
  const auto* base = static_cast<const uint8_t*>(m.data);
  const int32_t* offsets = nullptr;
  if constexpr (SubBlockOffsets<L> && D != DType::Q2_K) {
    thread_local std::vector<int32_t> storage;
    storage.resize(size_t(4 * T * blocks));
    L::template sub_block_offsets<D == DType::Q3_K ? 4 : 32>(x, T * blocks, storage.data());
    offsets = storage.data();
  }
  constexpr int kGroupTokens = std::min(T, L::q6_k_tokens);
  for (int64_t r = r0; r < r1; r += 8)
    for (int t = 0; t < T; t += kGroupTokens)
      L::template q6_k_x8<kGroupTokens, D>(base + size_t(r) * row_bytes, x + t * blocks,
                                           offsets ? offsets + 4 * t * blocks : nullptr,
                                           half_sums ? half_sums + 2 * t * blocks : nullptr, blocks, y + t * m.rows + r,
                                           m.rows);
}

// Interleaved IQ4_XS groups from r0 to r1 against T tokens: as interleaved_rows_for_tokens takes
// the other types' groups (pairs of groups on lanes that have them, then one group at a time in
// tiles of at most L::x8_tokens tokens).
template <class L, int T, bool kPairs>
void iq4_xs_groups(const Matrix& m, const ActivationBlock* x, float* y, int64_t r0, int64_t r1, bool first_turn) {
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
  const auto* base = static_cast<const uint8_t*>(m.data);
  int64_t r = r0;
  if constexpr (kPairs && PairedGroups<L>)
    for (; r + 16 <= r1; r += 16)
      L::template iq4_xs_x16<T>(base + size_t(r) * row_bytes, 8 * row_bytes, x, blocks, y + r, m.rows,
                                first_turn && r + 32 <= m.rows / 8 * 8);
  constexpr int kGroupTokens = std::min(T, L::x8_tokens);
  for (; r < r1; r += 8)
    for (int t = 0; t < T; t += kGroupTokens)
      L::template iq4_xs_x8<kGroupTokens>(base + size_t(r) * row_bytes, x + t * blocks, blocks, y + t * m.rows + r, m.rows);
}

// Groups of 8 interleaved rows from r0 to r1 (both multiples of 8). Several tokens on a lane with
// tiles of two groups (kPairs) take the rows 16 at a time and a last odd group alone (in tiles of at
// most L::x8_tokens tokens); one token alone keeps the one-group tile (decode, which prefetches its
// rows).
// first_turn: the tiles of two groups read these rows from memory (see quant_matmul_rows).
template <class L, int T, bool kPairs = (T > 1)>
void interleaved_rows_for_tokens(const Matrix& m, const ActivationBlock* x, const int16_t* sums, float* y, int64_t r0,
                                 int64_t r1, bool first_turn = false) {
  if (m.dtype == DType::Q6_K) return q6_k_groups<L, T, DType::Q6_K>(m, x, nullptr, y, r0, r1);
  if (m.dtype == DType::Q3_K) return q6_k_groups<L, T, DType::Q3_K>(m, x, nullptr, y, r0, r1);
  if (m.dtype == DType::Q2_K) return q6_k_groups<L, T, DType::Q2_K>(m, x, sums, y, r0, r1);
  if (m.dtype == DType::IQ4_XS) return iq4_xs_groups<L, T, kPairs>(m, x, y, r0, r1, first_turn);
  const int64_t blocks = m.cols / 32;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
  const auto* base = static_cast<const uint8_t*>(m.data);
  int64_t r = r0;
  // Q4_K's tiles, or Q5_K's: the same tiles with its top bits; Q8_0's, or Q4_0's / Q5_0's / Q4_1's /
  // Q5_1's: the same tiles on their nibbles (and top bits) (util/quant.hpp's layouts).
  const auto groups = [&]<DType D>() {
    if constexpr (kPairs && PairedGroups<L>)
      for (; r + 16 <= r1; r += 16) {
        // The next two groups, this call's or (on this thread: matmul_batch hands each thread runs
        // of consecutive blocks) the next call's.
        const bool prefetch = first_turn && r + 32 <= m.rows / 8 * 8;
        const uint8_t* g = base + size_t(r) * row_bytes;
        if constexpr (D == DType::Q8_0 || quant::is_nibble_block(D))
          L::template q8_0_x16<T, D>(g, 8 * row_bytes, x, blocks, y + r, m.rows, prefetch);
        else L::template q4_k_x16<T, D>(g, 8 * row_bytes, x, sums, blocks, y + r, m.rows, prefetch);
      }
    constexpr int kGroupTokens = std::min(T, L::x8_tokens);
    for (; r < r1; r += 8)
      for (int t = 0; t < T; t += kGroupTokens) {
        if constexpr (D == DType::Q8_0 || quant::is_nibble_block(D))
          L::template q8_0_x8<kGroupTokens, D>(base + size_t(r) * row_bytes, x + t * blocks, blocks, y + t * m.rows + r,
                                            m.rows);
        else
          L::template q4_k_x8<kGroupTokens, D>(base + size_t(r) * row_bytes, x + t * blocks, sums + t * blocks, blocks,
                                               y + t * m.rows + r, m.rows);
      }
  };
  switch (m.dtype) {
    case DType::Q8_0: return groups.template operator()<DType::Q8_0>();
    case DType::Q4_0: return groups.template operator()<DType::Q4_0>();
    case DType::Q5_0: return groups.template operator()<DType::Q5_0>();
    case DType::Q4_1: return groups.template operator()<DType::Q4_1>();
    case DType::Q5_1: return groups.template operator()<DType::Q5_1>();
    case DType::IQ4_NL: return groups.template operator()<DType::IQ4_NL>();
    case DType::MXFP4: return groups.template operator()<DType::MXFP4>();
    case DType::Q5_K: return groups.template operator()<DType::Q5_K>();
    default: return groups.template operator()<DType::Q4_K>();
  }
}

template <class L>
concept CodebookPanels = requires { typename L::CodebookPanel; };

// Codebook or ternary rows against several tokens on a lane with panels (L::CodebookPanel): each
// row's super-blocks decoded once (4 rows at a time), then every tile of 4 tokens (and the last
// 1 to 3) reads the decoded panels: the exact integers and float steps of codebook_tile, in its
// order, so the same bits as the rows' tiles and as a token alone.
template <class L, DType kType>
void codebook_panels(const Matrix& m, const ActivationBlock* x, int tokens, float* y, int64_t r0, int64_t r1) {
  const int64_t blocks = m.cols / 32, superblocks = m.cols / 256;
  const size_t row_bytes = dtype_row_bytes(m.dtype, m.row_stride()), block_bytes = dtype_row_bytes(kType, 256);
  const auto* base = static_cast<const uint8_t*>(m.data);
  thread_local std::vector<typename L::CodebookPanel> panels;
  panels.resize(size_t(4 * superblocks));
  const auto tile = [&]<int R, int T>(int64_t r, int t) {
    float acc[R][T] = {};
    L::template codebook_panel_tile<R, T>(panels.data(), superblocks, x + t * blocks, blocks, acc);
    for (int i = 0; i < R; ++i)
      for (int k = 0; k < T; ++k) y[(t + k) * m.rows + r + i] = acc[i][k];
  };
  const auto rows = [&]<int R>(int64_t r) {
    for (int i = 0; i < R; ++i)
      for (int64_t sb = 0; sb < superblocks; ++sb)
        L::template codebook_panel<kType>(base + size_t(r + i) * row_bytes + size_t(sb) * block_bytes,
                                          &panels[size_t(i * superblocks + sb)]);
    int t = 0;
    for (; t + 4 <= tokens; t += 4) tile.template operator()<R, 4>(r, t);
    for (; t < tokens; ++t) tile.template operator()<R, 1>(r, t);
  };
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) rows.template operator()<4>(r);
  for (; r < r1; ++r) rows.template operator()<1>(r);
}

// Token pairs take turns over the rows, which stay in cache while the pairs read them.
// sums: Q4_K's and Q5_K's activation_sums of x (their min terms read each super-block's 8 as one
// vector), null for Q8_0.
template <class L>
void quant_matmul_rows(const Matrix& m, const ActivationBlock* x, const int16_t* sums, int tokens, float* y, int64_t r0,
                       int64_t r1) {
  const int64_t blocks = m.cols / 32;
  const int64_t sums_per_token = blocks * activation_sums_per_block(m.dtype);
  const auto sums_of = [&](int t) { return sums ? sums + t * sums_per_token : nullptr; };
  if (m.layout == Layout::Interleaved8) {
    // r0 is a multiple of 8 (matmul_batch's blocks of rows are), so the groups start at r0.
    const int64_t grouped_end = std::max(r0, std::min(r1, m.rows / 8 * 8));
    // Several tokens go over these rows in turns, the first from memory and the others from L1.
    // Lanes with tiles of two groups take turns of L::x16_tokens, then of 4, 2 and 1 tokens; their
    // first turn asks for the next two groups' lines block by block as it goes (it reads two
    // streams of rows, which the hardware prefetchers did not follow: 4 tokens from memory ran at
    // half the rate of one group at a time). Other lanes, over one stream, ask for the rows after
    // these (the next call's) a share before each turn, so that they arrive while these compute
    // instead of in the next call's first turn.
    constexpr int kTokens = turn_tokens<L>();
    int t = 0;
    if constexpr (PairedGroups<L>) {
      bool first = true;
      const auto turn = [&]<int T>() {
        interleaved_rows_for_tokens<L, T>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, grouped_end, first);
        first = false;
        t += T;
      };
      if (tokens > 1) {
        while (t + kTokens <= tokens) turn.template operator()<kTokens>();
        if (tokens - t >= 4) turn.template operator()<4>();
        if (tokens - t >= 2) turn.template operator()<2>();
        if (tokens - t == 1) {  // from cache: the pairs run it 1.0-1.1x as fast as the one-group tile
          interleaved_rows_for_tokens<L, 1, true>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, grouped_end);
          ++t;
        }
      }
    } else {
      const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
      const auto* next = static_cast<const uint8_t*>(m.data) + size_t(grouped_end) * row_bytes;
      const int64_t next_rows = std::max<int64_t>(0, std::min(m.rows / 8 * 8, 2 * grouped_end - r0) - grouped_end);
      const size_t next_bytes = size_t(next_rows) * row_bytes;
      const int turns = tokens / kTokens;
      const size_t share = turns > 1 ? round_up(next_bytes / turns, 64) : 0;
      for (int turn = 0; t + kTokens <= tokens; t += kTokens, ++turn) {
        for (size_t at = share * turn; at < std::min(next_bytes, share * (turn + 1)); at += 64)
          __builtin_prefetch(next + at);
        interleaved_rows_for_tokens<L, kTokens>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, grouped_end);
      }
    }
    for (; t < tokens; ++t)
      interleaved_rows_for_tokens<L, 1>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, grouped_end);
    r0 = grouped_end;  // the rows after the last whole group lie as rows
  }
  if constexpr (CodebookPanels<L>)
    if (quant::is_codebook_block(m.dtype) && tokens >= 8)
      return quant::with_codebook_type(m.dtype, [&]<DType D>() { codebook_panels<L, D>(m, x, tokens, y, r0, r1); });
  int t = 0;
  // Q4_0, Q5_0, Q4_1, Q5_1, Q2_K, Q3_K, Q5_K and Q6_K unpack each block's values once per tile: 4
  // tokens share it.
  if (m.dtype != DType::Q8_0 && m.dtype != DType::Q4_K)
    for (; t + 4 <= tokens; t += 4) quant_rows_for_tokens<L, 4>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, r1);
  for (; t + 2 <= tokens; t += 2) quant_rows_for_tokens<L, 2>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, r1);
  for (; t < tokens; ++t) quant_rows_for_tokens<L, 1>(m, x + t * blocks, sums_of(t), y + t * m.rows, r0, r1);
}

}  // namespace
}  // namespace quant_impl
}  // namespace crossmoe::kernels
