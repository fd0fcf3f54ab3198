#pragma once
// The 512-bit integer lane of quant_matmul_impl.hpp for CPUs with AVX512-VNNI: vpdpbusd multiplies
// 64 unsigned by 64 signed bytes and adds each 4 products into a 32-bit lane in one instruction
// (AVX2 needs vpmaddubsw, vpmaddwd and vpaddd per 32 bytes). Included by matmul_avx512_vnni.cpp,
// compiled with the AVX-512 and VNNI flags, and by matmul_amx.cpp, whose tiles unpack the groups
// with small_group_values and with_high_bit.
//
// Only the interleaved tiles (q8_0_x8, q4_k_x8: the layout a loaded model holds, util/quant.hpp)
// are new; the products over rows as stored (the rows after a matrix's last group of 8, matrices
// of fewer rows) and the activation quantization are QuantLaneAvx2's, in their EVEX encodings.
// A 64-byte chunk of an interleaved group holds 8 bytes of each of its 8 rows (rows 0, 1, 4, 5 in
// the low half, 2, 3, 6, 7 in the high half, two 32-bit lanes per row), so one vpdpbusd against 8
// activation bytes broadcast to every quarter serves the whole group, and the two halves of the
// sums are exactly the two vectors QuantLaneAvx2's tiles end with: its float steps
// (the vphaddd that puts the rows in order, q4_k_finish) then give the same bits.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/quant_lane_avx2.hpp"

namespace crossmoe::kernels {
namespace {

struct QuantLaneAvx512Vnni : QuantLaneAvx2 {
  static __m512i bytes8(const int8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
  }
  // (The zero-masking forms: GCC 12's plain casts and extracts start from an "undefined" vector
  // that -Wmaybe-uninitialized reports; with a full mask they compile to the same instructions.)
  static __m256i low_half(__m512i v) { return _mm512_maskz_extracti64x4_epi64(0xff, v, 0); }
  static __m256i high_half(__m512i v) { return _mm512_maskz_extracti64x4_epi64(0xff, v, 1); }

  static constexpr int x8_tokens = 4;  // tokens per interleaved tile

  // Q8_0: weights and activations are both signed, vpdpbusd wants one side unsigned. w ^ 0x80 is
  // w + 128 as an unsigned byte, so the lanes sum (w + 128) * a, and a row's two lanes over a
  // block exceed its product by 128 * sum(a) = 128 * a.sum, the same for every row: subtracted
  // once per block and token. |lane| <= 16 * 255 * 127 per block: exact in 32 bits.
  // Q4_0 (util/quant.hpp: a chunk of nibbles holds Q8_0's chunks k and k + 2) takes the nibbles
  // q = value + 8 as they are, unsigned: the lanes exceed the products by 8 * a.sum per block.
  // Either way the rows' integer sums are Q8_0's exact dot of the block's int8 values.
  // Q5_0 adds its top bits (word k of the group: a byte mask of the chunk) as 16: q = value + 16.
  // Q4_1 and Q5_1 take their q as Q4_0 and Q5_0 do, with no bias (value = q * d + m), and a second
  // float step for m (min_step).
  // IQ4_NL's nibbles index a table (quant::kIq4NlValues), kept here + 128 as unsigned bytes: the
  // lanes exceed the products by 128 * a.sum, as Q8_0's. MXFP4's (quant::kMxfp4Values) the same.
  template <DType D>
  static constexpr int small_block_bias = D == DType::Q4_0 ? 8 : D == DType::Q5_0 ? 16 : quant::has_block_min(D) ? 0 : 128;
  static __m512i biased_table(const int8_t* values) {
    // (the masked form: GCC 12 warns that the plain broadcast's unused source may be uninitialized)
    const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(values));
    return _mm512_xor_si512(_mm512_maskz_broadcast_i32x4(0xffff, table), _mm512_set1_epi8(char(0x80)));
  }
  static __m512i iq4_nl_biased_values() { return biased_table(quant::kIq4NlValues); }
  // Q8_0's chunk k of a group's 2 chunks of nibbles at q (Q4_0's, IQ4_NL's): the low nibbles for k < 2.
  static __m512i chunk_nibbles(const uint8_t* q, int k) {
    const __m512i raw = _mm512_loadu_si512(q + 64 * (k % 2));
    return _mm512_and_si512(k < 2 ? raw : _mm512_srli_epi16(raw, 4), _mm512_set1_epi8(15));
  }
  template <DType D>
  static __m512i small_group_values(const uint8_t* g, int k) {  // Q8_0's chunk k, each value + bias
    if constexpr (D == DType::Q8_0) return _mm512_xor_si512(_mm512_loadu_si512(g + 16 + 64 * k), _mm512_set1_epi8(char(0x80)));
    const __m512i nibbles = chunk_nibbles(g + quant::small_group_nibbles(D), k);
    if constexpr (D == DType::IQ4_NL) return _mm512_shuffle_epi8(iq4_nl_biased_values(), nibbles);
    if constexpr (D == DType::MXFP4) return _mm512_shuffle_epi8(biased_table(quant::kMxfp4Values), nibbles);
    if constexpr (!quant::has_fifth_bit(D)) return nibbles;
    __mmask64 top;
    std::memcpy(&top, g + quant::small_group_high_bits(D) + 8 * k, 8);
    return _mm512_or_si512(nibbles, _mm512_maskz_mov_epi8(top, _mm512_set1_epi8(16)));
  }
  template <int T, DType D = DType::Q8_0>
  static void q8_0_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    constexpr size_t kBytes = small_group_bytes<D>;
    for (int64_t b = 0; b < blocks; ++b, g += kBytes) {
      // One token reads each group once from memory: every line of the block 32 blocks (8.5 KiB)
      // ahead is asked for. 8 blocks ahead, as QuantLaneAvx2::q8_0_x8 asks, streamed a large
      // matrix 1.02-1.30x slower (median 1.12x) in a one-thread scratch loop that took turns
      // between distances (docs/benchmarks.md, sixth round).
      if constexpr (T == 1)
        for (size_t line = 0; line < kBytes; line += 64) __builtin_prefetch(g + 32 * kBytes + line);
      const __m256 d = small_group_steps<D>(g);
      __m512i sums[T];
      for (int t = 0; t < T; ++t) sums[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512i w = small_group_values<D>(g, k);
        for (int t = 0; t < T; ++t) sums[t] = _mm512_dpbusd_epi32(sums[t], w, bytes8(x[t * blocks + b].q + 8 * k));
      }
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        const __m256i rows = _mm256_sub_epi32(_mm256_hadd_epi32(low_half(sums[t]), high_half(sums[t])),
                                              _mm256_set1_epi32(small_block_bias<D> * a.sum));
        const __m256 da = _mm256_mul_ps(d, _mm256_broadcast_ss(&a.d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), da, acc[t]);
        if constexpr (quant::has_block_min(D)) acc[t] = QuantLaneAvx2::min_step(g + 16, a, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }

  // IQ4_XS (util/quant.hpp): per sub-block j, the 8 rows' IQ4_NL chunks (values + 128, as
  // small_group_values) against activation block 8 s + j, and their steps float(d * (ls[j] - 32))
  // made for the 8 rows at once (iq4_xs_steps): iq4_xs_tile's integers and float steps, the rows' bits.
  template <int T>
  static void iq4_xs_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    constexpr size_t kBytes = 8 * 136;
    for (int64_t b = 0; b < blocks; b += 8, g += kBytes) {
      // One token: the lines of the group 8 super-blocks (8.5 KiB) ahead, as q8_0_x8.
      if constexpr (T == 1)
        for (size_t line = 0; line < kBytes; line += 64) __builtin_prefetch(g + 8 * kBytes + line);
      __m256 steps[8];
      iq4_xs_steps(g, steps);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m256 step = steps[j];
        const uint8_t* q = g + quant::kIq4XsNibbles + 128 * j;
        __m512i sums[T];
        for (int t = 0; t < T; ++t) sums[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m512i w = _mm512_shuffle_epi8(iq4_nl_biased_values(), chunk_nibbles(q, k));
          for (int t = 0; t < T; ++t) sums[t] = _mm512_dpbusd_epi32(sums[t], w, bytes8(x[t * blocks + b + j].q + 8 * k));
        }
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + b + j];
          const __m256i rows = _mm256_sub_epi32(_mm256_hadd_epi32(low_half(sums[t]), high_half(sums[t])),
                                                _mm256_set1_epi32(128 * a.sum));
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), _mm256_mul_ps(step, _mm256_broadcast_ss(&a.d)), acc[t]);
        }
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }

  // Q6_K: quarters k and k + 1 (k = 0, 2) of half h in one vector, the 6-bit q (unsigned) of
  // activation blocks 4h + k and 4h + k + 1. vpdpbusd adds 4 products q a per lane and 4 products
  // 32 a per lane of the correction; their difference, (q - 32) a over 4 values, is at most 16256
  // in the lane's low 16 bits, so vpdpwssd against the lane's sub-block scale (sign-extended to 16
  // bits, zero above) multiplies and adds it exactly.
  // Q5_K: sub-blocks 2p (low nibbles, the low 256 bits) and 2p + 1 (high nibbles, the high 256)
  // in one vector against activation blocks 2p and 2p + 1; qh's bits 2p and 2p + 1 (qh shifted
  // right by 0 | 1, then by 2 per pair) moved to bit 4. vpdpbusd adds 4 products q a per lane
  // (|sum| <= 15748, exact in the lane's low 16 bits), and vpdpwssd multiplies it by the lane's
  // sub-block scale (zero above 16 bits), exactly.
  template <int T>
  static void q5_k_sums(const uint8_t* w, const uint8_t* sc, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    const __m512i low4 = _mm512_set1_epi8(15), bit4 = _mm512_set1_epi8(16);
    const __m512i halves = _mm512_mask_blend_epi64(0xf0, _mm512_setzero_si512(), _mm512_set1_epi16(1));
    // The zero-masked broadcasts (mask all ones: the same values) keep GCC 12 from warning that the
    // plain one's _mm512_undefined_epi32 source may be used uninitialized.
    __m512i qh = _mm512_srlv_epi16(
        _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16))), halves);
    const __m512i nibble_shift = _mm512_slli_epi16(halves, 2);  // 0 | 4
    __m512i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      const __m512i qs =
          _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 48 + 32 * p)));
      const __m512i nibbles = _mm512_and_si512(_mm512_srlv_epi16(qs, nibble_shift), low4);
      const __m512i q = _mm512_or_si512(nibbles, _mm512_and_si512(_mm512_slli_epi16(qh, 4), bit4));
      qh = _mm512_srli_epi16(qh, 2);
      const __m512i scale = _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32(sc[2 * p]), _mm512_set1_epi32(sc[2 * p + 1]));
      for (int t = 0; t < T; ++t) {
        const ActivationBlock* a = x + t * blocks + 2 * p;
        const __m512i av = _mm512_maskz_inserti64x4(0xff, _mm512_maskz_loadu_epi64(0x0f, a[0].q),
                                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[1].q)), 1);
        acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av), scale);
      }
    }
    for (int t = 0; t < T; ++t) sums[t] = sum_lanes(_mm256_add_epi32(low_half(acc[t]), high_half(acc[t])));
  }

  // Q2_K / Q3_K: two activation blocks at a time (half h, quarters k and k + 1 in the low and high
  // 256 bits), their q from qs's 32 bytes of half h in both halves shifted by 2k and 2k + 2 (and
  // Q3_K's top bits from hmask by 4h + k and 4h + k + 1). 32-bit lanes 4s .. 4s + 3 hold sub-block
  // 8h + 2k + s: vpdpbusd's sums of 4 products, |.| <= 4 * 7 * 127, exact in their low 16 bits,
  // which vpdpwssd multiplies by the lane's factor (its high 16 bits cleared).
  template <int T, DType kType>
  static void low_bit_k_sums(const uint8_t* w, const ActivationBlock* x, const int16_t* half_sums, int64_t blocks,
                             int32_t* dots, int32_t* mins) {
    constexpr bool kThreeBits = kType == DType::Q3_K;
    const __m512i low16 = _mm512_set1_epi32(0xffff), ones = _mm512_set1_epi8(1), low2 = _mm512_set1_epi8(3);
    __m512i scales, min_factors;  // 16 factors, one per 32-bit lane
    if constexpr (kThreeBits) {
      const __m512i factor = _mm512_maskz_cvtepi8_epi32(0xffff, q3_k_factors(w));
      scales = _mm512_and_si512(factor, low16);
      min_factors = _mm512_and_si512(_mm512_maskz_slli_epi32(0xffff, factor, 2), low16);
    } else {
      const __m512i packed = _mm512_maskz_cvtepu8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
      scales = _mm512_and_si512(packed, _mm512_set1_epi32(15));
      min_factors = _mm512_maskz_srli_epi32(0xffff, packed, 4);
    }
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i hmask =
        kThreeBits ? _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)))
                   : _mm512_setzero_si512();
    const uint8_t* qs = w + (kThreeBits ? 32 : 16);
    // The min term at once: the 16 half sums (sign-extended to 32 bits) times the 16 factors.
    __m512i dot_acc[T], min_acc[T];
    for (int t = 0; t < T; ++t) {
      dot_acc[t] = _mm512_setzero_si512();
      min_acc[t] = _mm512_dpwssd_epi32(
          _mm512_setzero_si512(),
          _mm512_maskz_cvtepi16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half_sums + 2 * t * blocks))),
          min_factors);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i fields =
          _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * h)));
#pragma GCC unroll 2
      for (int k = 0; k < 4; k += 2) {
        const __m512i shift = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(short(2 * k)), _mm512_set1_epi16(short(2 * k + 2)));
        __m512i q = _mm512_and_si512(_mm512_srlv_epi16(fields, shift), low2);
        if constexpr (kThreeBits) {
          const __m512i bit =
              _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(short(4 * h + k)), _mm512_set1_epi16(short(4 * h + k + 1)));
          q = _mm512_or_si512(q, _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(hmask, bit), ones), 2));
        }
        const __m512i lanes = _mm512_add_epi32(spread, _mm512_set1_epi32(8 * h + 2 * k));
        const __m512i s = _mm512_maskz_permutexvar_epi32(0xffff, lanes, scales);
        for (int t = 0; t < T; ++t) {
          const ActivationBlock* a = x + t * blocks + 4 * h + k;
          const __m512i av = _mm512_maskz_inserti64x4(0xff, _mm512_maskz_loadu_epi64(0x0f, a[0].q),
                                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[1].q)), 1);
          dot_acc[t] = _mm512_dpwssd_epi32(dot_acc[t], _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av), s);
        }
      }
    }
    const auto total = [](__m512i v) { return sum_lanes(_mm256_add_epi32(low_half(v), high_half(v))); };
    for (int t = 0; t < T; ++t) {
      if constexpr (kThreeBits) {
        dots[t] = total(_mm512_sub_epi32(dot_acc[t], min_acc[t]));
        mins[t] = 0;
      } else {
        dots[t] = total(dot_acc[t]);
        mins[t] = total(min_acc[t]);
      }
    }
  }

  template <int T>
  static void q6_k_sums(const uint8_t* w, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    const __m512i low4 = _mm512_set1_epi8(15), top2 = _mm512_set1_epi8(0x30), offset = _mm512_set1_epi8(32);
    // 16 scales, one per 32-bit lane, the high 16 bits cleared.
    const __m512i scales = _mm512_and_si512(
        _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 192))),
        _mm512_set1_epi32(0xffff));
    // qh's 2-bit fields to bits 4, 5: quarters 0 | 1 shift left by 4 | 2, quarters 2 | 3 right by 0 | 2.
    const __m512i left = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi16(4), _mm512_set1_epi16(2));
    const __m512i right = _mm512_mask_blend_epi64(0xf0, _mm512_setzero_si512(), _mm512_set1_epi16(2));
    __m512i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(w + 64 * h);
      const __m512i qh =
          _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 128 + 32 * h)));
#pragma GCC unroll 2
      for (int k = 0; k < 4; k += 2) {
        const __m512i nibbles = _mm512_and_si512(k == 0 ? ql : _mm512_srli_epi16(ql, 4), low4);
        const __m512i high = k == 0 ? _mm512_sllv_epi16(qh, left) : _mm512_srlv_epi16(qh, right);
        const __m512i q = _mm512_or_si512(nibbles, _mm512_and_si512(high, top2));
        // Lanes 4s .. 4s + 3 hold sub-block 8h + 2k + s.
        const __m512i scale = _mm512_maskz_permutexvar_epi32(
            0xffff,
            _mm512_add_epi32(_mm512_set1_epi32(8 * h + 2 * k), _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)),
            scales);
        for (int t = 0; t < T; ++t) {
          const ActivationBlock* a = x + t * blocks + 4 * h + k;
          const __m512i av = _mm512_maskz_inserti64x4(0xff, _mm512_maskz_loadu_epi64(0x0f, a[0].q),
                                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[1].q)), 1);
          const __m512i products = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av),
                                                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), offset, av));
          acc[t] = _mm512_dpwssd_epi32(acc[t], products, scale);
        }
      }
    }
    for (int t = 0; t < T; ++t) sums[t] = sum_lanes(_mm256_add_epi32(low_half(acc[t]), high_half(acc[t])));
  }

  // Q6_K, interleaved (util/quant.hpp): a 64-byte chunk of a span holds 8 values of each of 8 rows;
  // one vpdpbusd adds 4 products q a (q in 0..63) per 32-bit lane, two lanes per row. A
  // sub-block's two chunks start from the lane's offset (sub_block_offsets: -32 times the lane's 8
  // activations), so the lane ends at sum (q - 32) a over 8 values, |.| <= 8 * 32 * 127 = 32512:
  // exact in 16 bits. vpackssdw packs a block's two sub-blocks (a row's two lanes per 32 bits) and
  // vpdpwssd multiplies each by its row's scale and adds the pair: the rows' integer sums exactly.
  // Offsets: per sub-block, two int32, -32 (a[0..3] + a[8..11]) and -32 (a[4..7] + a[12..15]) of
  // its 16 activations (the even and odd lanes' sums), sub-block 2b's then 2b + 1's for block b.
  // Tokens per tile: the unpacking of a group's 6-bit values (about 4 instructions per 64 bytes)
  // is shared by 8 tokens, whose integer sums take 8 of the 32 registers.
  // Q3_K (interleaved as Q6_K) runs the same tiles on its 3-bit q with offsets of -4 (|lane| <= 8 *
  // 4 * 127) and its scales unpacked per super-block (QuantLaneAvx2::q3_k_group_scales).
  static constexpr int q6_k_tokens = 8;
  template <int kBias>
  static void sub_block_offsets(const ActivationBlock* x, int64_t n, int32_t* out) {
    const __m256i offset = _mm256_set1_epi8(kBias);
    for (int64_t b = 0; b < n; ++b) {
      const __m256i quads =
          _mm256_dpbusd_epi32(_mm256_setzero_si256(), offset, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q)));
      const __m256i sub = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_add_epi32(quads, _mm256_srli_si256(quads, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * b),
                       _mm256_castsi256_si128(_mm256_permute4x64_epi64(sub, 0x08)));
    }
  }
  // Chunk k of activation block 4u + m's 6-bit values, 8 rows (as QuantLaneAvx2::q6_k_values).
  static __m512i q6_k_values(const uint8_t* g, int u, int m, int k) {
    const __m512i ql = _mm512_loadu_si512(g + 256 * (2 * u + m % 2) + 64 * k);
    const __m512i qh = _mm512_loadu_si512(g + 1024 + 256 * u + 64 * k);
    const __m512i low = _mm512_and_si512(m < 2 ? ql : _mm512_srli_epi16(ql, 4), _mm512_set1_epi8(15));
    const __m512i high = m == 0 ? _mm512_slli_epi16(qh, 4) : m == 1 ? _mm512_slli_epi16(qh, 2)
                         : m == 2 ? qh : _mm512_srli_epi16(qh, 2);
    return _mm512_or_si512(low, _mm512_and_si512(high, _mm512_set1_epi8(0x30)));
  }
  // The same chunk of Q3_K's 3-bit values (as QuantLaneAvx2::q3_k_values).
  static __m512i q3_k_values(const uint8_t* g, int u, int m, int k) {
    const __m512i qs = _mm512_loadu_si512(g + 256 * u + 64 * k);
    const __m512i hm = _mm512_loadu_si512(g + quant::kQ3_KHighBits + 64 * k);
    const int bit = 4 * u + m;
    const __m512i high = bit <= 2 ? _mm512_slli_epi16(hm, 2 - bit) : _mm512_srli_epi16(hm, bit - 2);
    return _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qs, 2 * m), _mm512_set1_epi8(3)),
                           _mm512_and_si512(high, _mm512_set1_epi8(4)));
  }
  // The same chunk of Q2_K's 2-bit values (as QuantLaneAvx2::q2_k_values).
  static __m512i q2_k_values(const uint8_t* g, int u, int m, int k) {
    return _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(g + 256 * u + 64 * k), 2 * m), _mm512_set1_epi8(3));
  }
  template <DType D>
  static __m512i q6_k_tile_values(const uint8_t* g, int u, int m, int k) {
    if constexpr (D == DType::Q2_K) return q2_k_values(g, u, m, k);
    else if constexpr (D == DType::Q3_K) return q3_k_values(g, u, m, k);
    else return q6_k_values(g, u, m, k);
  }
  // Q6_K, Q3_K or Q2_K as QuantLaneAvx2::q6_k_x8 takes them (Q2_K's min terms and step are its own).
  template <int T, DType D = DType::Q6_K>
  static void q6_k_x8(const uint8_t* g, const ActivationBlock* x, const int32_t* offsets, const int16_t* half_sums,
                      int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    // Per 128 bits (slots 2i, 2i + 1), the packed lanes hold both slots' sub-block 2b, then 2b + 1:
    // each 16-bit pair gets its slot's scale, from the 16 scales of the block (sub-block 2b's 8
    // slots, then 2b + 1's) widened to 16 bits.
    const __m512i spread = _mm512_set_epi16(15, 15, 14, 14, 7, 7, 6, 6, 13, 13, 12, 12, 5, 5, 4, 4,  //
                                            11, 11, 10, 10, 3, 3, 2, 2, 9, 9, 8, 8, 1, 1, 0, 0);
    // Slots 0, 1 | 4, 5 | 2, 3 | 6, 7 lie in lanes 0, 1 | 8, 9 | 4, 5 | 12, 13 after the pairs are
    // added: rows 0..7 in order.
    const __m512i rows = _mm512_setr_epi32(0, 1, 8, 9, 4, 5, 12, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    constexpr int kGroup = D == DType::Q2_K ? 8 * 84 : D == DType::Q3_K ? 8 * 110 : 8 * 210;
    for (int64_t sb = 0; sb < blocks; sb += 8, g += kGroup) {
      if constexpr (T == 1)
        for (int line = 0; line < kGroup; line += 64) __builtin_prefetch(g + 2 * kGroup + line);
      alignas(32) int8_t unpacked[128];
      const int8_t* scales = reinterpret_cast<const int8_t*>(g + quant::kQ6_KScales);
      if constexpr (D == DType::Q3_K) q3_k_group_scales(g, unpacked);
      if constexpr (D == DType::Q2_K) q2_k_group_scales(g, unpacked);
      if constexpr (D != DType::Q6_K) scales = unpacked;
      __m256i mins[T][2];
      if constexpr (D == DType::Q2_K) q2_k_mins<T>(g, half_sums, blocks, sb, mins);
      __m512i dots[T];
      for (int t = 0; t < T; ++t) dots[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int b = 0; b < 8; ++b) {
        const int u = b / 4, m = b % 4;
        const __m512i q[4] = {q6_k_tile_values<D>(g, u, m, 0), q6_k_tile_values<D>(g, u, m, 1),
                              q6_k_tile_values<D>(g, u, m, 2), q6_k_tile_values<D>(g, u, m, 3)};
        const __m512i scale = _mm512_maskz_permutexvar_epi16(
            0xffffffff, spread,
            _mm512_maskz_cvtepi8_epi16(0xffffffff, _mm256_zextsi128_si256(_mm_loadu_si128(
                                                       reinterpret_cast<const __m128i*>(scales + 16 * b)))));
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + sb + b];
          __m512i sub[2];
          for (int s = 0; s < 2; ++s) {
            int64_t start = 0;  // Q2_K: no offsets
            if constexpr (D != DType::Q2_K) std::memcpy(&start, offsets + 4 * (t * blocks + sb + b) + 2 * s, 8);
            sub[s] = _mm512_dpbusd_epi32(_mm512_set1_epi64(start), q[2 * s], bytes8(a.q + 16 * s));
            sub[s] = _mm512_dpbusd_epi32(sub[s], q[2 * s + 1], bytes8(a.q + 16 * s + 8));
          }
          dots[t] = _mm512_dpwssd_epi32(dots[t], _mm512_packs_epi32(sub[0], sub[1]), scale);
        }
      }
      constexpr int64_t kSteps = D == DType::Q2_K ? quant::kQ2_KSteps : D == DType::Q3_K ? quant::kQ3_KSteps : quant::kQ6_KSteps;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + kSteps)));
      for (int t = 0; t < T; ++t) {
        const __m512i pairs = _mm512_add_epi32(dots[t], _mm512_maskz_shuffle_epi32(0xffff, dots[t], _MM_PERM_BADC));
        const __m256i sums = low_half(_mm512_maskz_permutexvar_epi32(0xffff, rows, pairs));
        const __m256 da = _mm256_mul_ps(d, _mm256_broadcast_ss(&x[t * blocks + sb].d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), da, acc[t]);
        if constexpr (D == DType::Q2_K) acc[t] = q2_k_min_step(g, mins[t], &x[t * blocks + sb].d, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }

  // Tiles of two groups at once (16 rows: g and the group after it, group_bytes later) x T tokens,
  // for several tokens: each activation broadcast serves both groups, and the steps after the
  // integer sums (their row order, the Q8_0 correction, the conversion, d * a.d, the FMA) run once
  // per 16 rows on 512-bit vectors instead of once per 8 on 256-bit ones. The same integer sums
  // and float steps per (row, token) as q8_0_x8 / q4_k_x8.
  static constexpr int x16_tokens = 8;  // tokens per tile of two groups

  // The 16 rows' exact sums from two groups' vpdpbusd sums (two lanes per row, rows 0, 1, 4, 5 |
  // 2, 3, 6, 7 as a group holds them): each row's two lanes added, group a's rows in the even
  // lanes and b's in the odd ones, the rows of q8_0_order (b's rows + 8). Blends and an in-lane
  // shuffle, not cross-lane permutes: on this Zen 5 those take the ports vpdpbusd needs (a
  // vpermt2d costs about one vpdpbusd, a vpshufd or a blend nothing, in a register-only loop).
  static __m512i q8_0_order() { return _mm512_setr_epi32(0, 8, 1, 9, 4, 12, 5, 13, 2, 10, 3, 11, 6, 14, 7, 15); }
  static __m512i q8_0_rows16(__m512i a, __m512i b) {
    const __m512i firsts = _mm512_mask_blend_epi32(0xaaaa, a, b);   // a's first lane of each row, b's second
    const __m512i seconds = _mm512_mask_blend_epi32(0xaaaa, b, a);  // b's first, a's second
    return _mm512_add_epi32(firsts, _mm512_maskz_shuffle_epi32(0xffff, seconds, _MM_PERM_CDAB));
  }
  // 8 halves at g and 8 at h (the two groups' d, or dmin) as 16 floats, in the lane order `order`.
  static __m512 halves16(const uint8_t* g, const uint8_t* h, __m512i order) {
    return _mm512_maskz_permutexvar_ps(0xffff, order, _mm512_maskz_cvtph_ps(0xffff, _mm256_set_m128i(
                                                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(h)),
                                                          _mm_loadu_si128(reinterpret_cast<const __m128i*>(g)))));
  }
  // The two groups' float steps (small_group_steps of g, then of h) in the lane order `order`.
  template <DType D>
  static __m512 steps16(const uint8_t* g, const uint8_t* h, __m512i order) {
    if constexpr (D != DType::MXFP4) return halves16(g, h, order);
    const __m512 both = _mm512_insertf32x8(_mm512_insertf32x8(_mm512_setzero_ps(), small_group_steps<D>(g), 0),
                                           small_group_steps<D>(h), 1);
    return _mm512_maskz_permutexvar_ps(0xffff, order, both);
  }
  // The lines of the next two groups (2 * group_bytes on) beside the kBytes at g and at h.
  template <int kBytes>
  static void prefetch_next_pair(const uint8_t* g, const uint8_t* h, size_t group_bytes) {
    for (int line = 0; line < kBytes; line += 64) {
      __builtin_prefetch(g + 2 * group_bytes + line);
      __builtin_prefetch(h + 2 * group_bytes + line);
    }
  }
  template <int T, DType D = DType::Q8_0>
  static void q8_0_x16(const uint8_t* g, size_t group_bytes, const ActivationBlock* x, int64_t blocks, float* y,
                       int64_t ldy, bool prefetch) {
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    const __m512i order = q8_0_order();
    const uint8_t* h = g + group_bytes;
    constexpr size_t kBytes = small_group_bytes<D>;
    for (int64_t b = 0; b < blocks; ++b, g += kBytes, h += kBytes) {
      if (prefetch) prefetch_next_pair<kBytes>(g, h, group_bytes);
      const __m512 d = steps16<D>(g, h, order);
      const __m512 m = quant::has_block_min(D) ? halves16(g + 16, h + 16, order) : d;
      __m512i sums_g[T], sums_h[T];
      for (int t = 0; t < T; ++t) sums_g[t] = sums_h[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512i wg = small_group_values<D>(g, k), wh = small_group_values<D>(h, k);
        for (int t = 0; t < T; ++t) {
          const __m512i a = bytes8(x[t * blocks + b].q + 8 * k);
          sums_g[t] = _mm512_dpbusd_epi32(sums_g[t], wg, a);
          sums_h[t] = _mm512_dpbusd_epi32(sums_h[t], wh, a);
        }
      }
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        const __m512i rows = _mm512_sub_epi32(q8_0_rows16(sums_g[t], sums_h[t]), _mm512_set1_epi32(small_block_bias<D> * a.sum));
        acc[t] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, rows), _mm512_mul_ps(d, _mm512_set1_ps(a.d)), acc[t]);
        if constexpr (quant::has_block_min(D))  // Q4_1 / Q5_1: QuantLaneAvx2::min_step on 16 rows
          acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(float(a.sum)), _mm512_mul_ps(m, _mm512_set1_ps(a.d)), acc[t]);
      }
    }
    // Back in row order (the inverse of q8_0_order).
    const __m512i rows = _mm512_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14, 1, 3, 9, 11, 5, 7, 13, 15);
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, _mm512_maskz_permutexvar_ps(0xffff, rows, acc[t]));
  }
  // IQ4_XS, two groups: iq4_xs_x8's sub-blocks on q8_0_x16's pairs, the 16 rows' steps in
  // q8_0_order (the same float steps per row and token: the rows' bits).
  template <int T>
  static void iq4_xs_x16(const uint8_t* g, size_t group_bytes, const ActivationBlock* x, int64_t blocks, float* y,
                         int64_t ldy, bool prefetch) {
    __m512 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    const __m512i order = q8_0_order();
    const uint8_t* h = g + group_bytes;
    constexpr size_t kBytes = 8 * 136;
    for (int64_t b = 0; b < blocks; b += 8, g += kBytes, h += kBytes) {
      if (prefetch) prefetch_next_pair<kBytes>(g, h, group_bytes);
      __m256 steps_g[8], steps_h[8];
      iq4_xs_steps(g, steps_g);
      iq4_xs_steps(h, steps_h);
      for (int j = 0; j < 8; ++j) {
        const __m512 step = _mm512_maskz_permutexvar_ps(
            0xffff, order, _mm512_insertf32x8(_mm512_castps256_ps512(steps_g[j]), steps_h[j], 1));
        const uint8_t* qg = g + quant::kIq4XsNibbles + 128 * j;
        const uint8_t* qh = h + quant::kIq4XsNibbles + 128 * j;
        __m512i sums_g[T], sums_h[T];
        for (int t = 0; t < T; ++t) sums_g[t] = sums_h[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m512i wg = _mm512_shuffle_epi8(iq4_nl_biased_values(), chunk_nibbles(qg, k));
          const __m512i wh = _mm512_shuffle_epi8(iq4_nl_biased_values(), chunk_nibbles(qh, k));
          for (int t = 0; t < T; ++t) {
            const __m512i a = bytes8(x[t * blocks + b + j].q + 8 * k);
            sums_g[t] = _mm512_dpbusd_epi32(sums_g[t], wg, a);
            sums_h[t] = _mm512_dpbusd_epi32(sums_h[t], wh, a);
          }
        }
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + b + j];
          const __m512i rows = _mm512_sub_epi32(q8_0_rows16(sums_g[t], sums_h[t]), _mm512_set1_epi32(128 * a.sum));
          acc[t] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, rows), _mm512_mul_ps(step, _mm512_set1_ps(a.d)), acc[t]);
        }
      }
    }
    const __m512i rows = _mm512_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14, 1, 3, 9, 11, 5, 7, 13, 15);
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, _mm512_maskz_permutexvar_ps(0xffff, rows, acc[t]));
  }

  // Q4_K: nibbles are unsigned, so vpdpbusd takes them as they are. Per sub-block, a lane adds
  // 16 products (4 chunks of 4): |lane| <= 16 * 15 * 127 = 30480, which fits the low 16 bits of
  // the lane as a signed number, so vpmaddwd against the row's 6-bit scale (in the low 16 bits of
  // the lanes, zero above) multiplies it exactly in one instruction.
  // The scales of sub-block j of all 8 rows: 8 bytes (rows 0, 1, 4, 5, 2, 3, 6, 7) broadcast,
  // each spread to its row's two lanes.
  static __m512i q4_k_scale(const uint64_t* scales, int j) {
    const __m512i spread = _mm512_set_epi8(  // highest byte first
        -1, -1, -1, 7, -1, -1, -1, 7, -1, -1, -1, 6, -1, -1, -1, 6,  //
        -1, -1, -1, 5, -1, -1, -1, 5, -1, -1, -1, 4, -1, -1, -1, 4,  //
        -1, -1, -1, 3, -1, -1, -1, 3, -1, -1, -1, 2, -1, -1, -1, 2,  //
        -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 0, -1, -1, -1, 0);
    return _mm512_shuffle_epi8(_mm512_set1_epi64(int64_t(scales[j])), spread);
  }
  // Q5_K (interleaved as Q4_K with its qh span, see QuantLaneAvx2::with_high_bit): with q <= 31 a
  // lane's 16 products reach 16 * 31 * 127 = 62992, past 16 bits, so its sums go to the 32-bit
  // sums every two chunks (8 products, at most 31496) instead of every four.
  static __m512i with_high_bit(__m512i nibbles, const uint8_t* qh, int j) {
    const __m512i bits = _mm512_loadu_si512(qh);
    const __m512i moved = j <= 4 ? _mm512_slli_epi16(bits, 4 - j) : _mm512_srli_epi16(bits, j - 4);
    return _mm512_or_si512(nibbles, _mm512_and_si512(moved, _mm512_set1_epi8(16)));
  }
  template <DType D>
  static constexpr int chunks_per_sum = D == DType::Q5_K ? 2 : 4;
  template <int T, DType D = DType::Q4_K>
  static void q4_k_x8(const uint8_t* g, const ActivationBlock* x, const int16_t* sums, int64_t blocks, float* y,
                      int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int64_t b = 0; b < blocks; b += 8, g += group_bytes<D>) {
      // One token: the lines of the group two super-blocks (2.25 KiB for Q4_K) ahead, as QuantLaneAvx2.
      if constexpr (T == 1)
        for (size_t line = 0; line < group_bytes<D>; line += 64) __builtin_prefetch(g + 2 * group_bytes<D> + line);
      Q4kHead head;
      q4_k_head(g, head);
      // head.scales[h][j] as one word per sub-block j: rows 0, 1, 4, 5 then 2, 3, 6, 7.
      alignas(32) uint64_t scales[8];
      {
        const __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(head.scales[0]));
        const __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(head.scales[1]));
        const __m256i lo = _mm256_unpacklo_epi32(s0, s1), hi = _mm256_unpackhi_epi32(s0, s1);  // j 0, 1, 4, 5 | 2, 3, 6, 7
        _mm256_store_si256(reinterpret_cast<__m256i*>(scales), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_store_si256(reinterpret_cast<__m256i*>(scales + 4), _mm256_permute2x128_si256(lo, hi, 0x31));
      }
      __m512i dots[T];
      for (int t = 0; t < T; ++t) dots[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const uint8_t* q = g + 128 + 256 * p;
        const __m512i s_even = q4_k_scale(scales, 2 * p), s_odd = q4_k_scale(scales, 2 * p + 1);
        __m512i even[T], odd[T];  // sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles)
        for (int t = 0; t < T; ++t) even[t] = odd[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m512i raw = _mm512_loadu_si512(q + 64 * k);
          __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
          if constexpr (D == DType::Q5_K) {
            lo = with_high_bit(lo, g + quant::kQ5_KHighBits + 64 * k, 2 * p);
            hi = with_high_bit(hi, g + quant::kQ5_KHighBits + 64 * k, 2 * p + 1);
          }
          for (int t = 0; t < T; ++t) {
            const ActivationBlock* a = x + t * blocks + b + 2 * p;
            even[t] = _mm512_dpbusd_epi32(even[t], lo, bytes8(a[0].q + 8 * k));
            odd[t] = _mm512_dpbusd_epi32(odd[t], hi, bytes8(a[1].q + 8 * k));
          }
          if ((k + 1) % chunks_per_sum<D> == 0)
            for (int t = 0; t < T; ++t) {
              dots[t] = _mm512_add_epi32(dots[t], _mm512_add_epi32(_mm512_madd_epi16(even[t], s_even),
                                                                   _mm512_madd_epi16(odd[t], s_odd)));
              even[t] = odd[t] = _mm512_setzero_si512();
            }
        }
      }
      for (int t = 0; t < T; ++t)
        acc[t] = q4_k_finish(head, low_half(dots[t]), high_half(dots[t]), sums + t * blocks + b, &x[t * blocks + b].d,
                             acc[t]);
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }

  // Q4_K, two groups: a sub-block's sums of both groups (|lane| <= 30480: exact in 16 bits) are
  // packed into one vector of 16-bit pairs, each pair the two lanes of one row, and one vpdpwssd
  // against the rows' scales (each twice) multiplies and adds them into the row's 32-bit lane. The
  // 16 rows' lanes come in the order of that pack, q4_k_order (rows of the second group + 8),
  // which the super-block's steps, mins and result take too (it is its own inverse).
  struct Q4kHead16 {
    __m512 d, dmin;    // per lane of q4_k_order
    __m512i mins[4];   // per pair q of sub-blocks, (m[2q], m[2q + 1]) as 16-bit pairs, per lane
    alignas(64) uint32_t scales[8][4];  // per sub-block: sc of rows 0, 1, 4, 5 | 2, 3, 6, 7 of g, then of h
  };
  static __m512i q4_k_order() { return _mm512_setr_epi32(0, 1, 8, 9, 4, 5, 12, 13, 2, 3, 10, 11, 6, 7, 14, 15); }
  static __m512i head_words(const uint8_t* g, const uint8_t* h) {  // 32 bytes of each group's head
    return _mm512_maskz_inserti64x4(0xff, _mm512_maskz_loadu_epi64(0x0f, g),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)), 1);
  }
  static void q4_k_head16(const uint8_t* g, const uint8_t* h, Q4kHead16& head) {
    const __m512i order = q4_k_order();
    head.d = halves16(g, h, order);
    head.dmin = halves16(g + 16, h + 16, order);
    const __m512i low6 = _mm512_set1_epi8(63), low4 = _mm512_set1_epi8(15), low2 = _mm512_set1_epi8(3);
    const __m512i w0 = head_words(g + 32, h + 32), w1 = head_words(g + 64, h + 64), w2 = head_words(g + 96, h + 96);
    // As q4_k_head, for both groups: word u of each half, unit u's scales (rows 0, 1, 4, 5) and
    // the rest of them (rows 2, 3, 6, 7), its mins' first and last 4 bytes.
    const __m512i sc_lo = _mm512_and_si512(w0, low6);
    const auto high2 = [&](__m512i w) {  // bits 6, 7 of each byte, at bits 4, 5
      return _mm512_maskz_slli_epi32(0xffff, _mm512_and_si512(_mm512_maskz_srli_epi32(0xffff, w, 6), low2), 4);
    };
    const __m512i sc_hi = _mm512_or_si512(_mm512_and_si512(w2, low4), high2(w0));
    const __m512i mins_lo = _mm512_and_si512(w1, low6);
    const __m512i mins_hi = _mm512_or_si512(_mm512_and_si512(_mm512_maskz_srli_epi32(0xffff, w2, 4), low4), high2(w1));
    // Per 128 bits, [lo u, hi u, lo u + 1, hi u + 1] for u = 0, 4 (g), 0, 4 (h) (unpacklo) and
    // u = 2, 6, 2, 6 (unpackhi): as 64-bit words, g's u = 0, 1, 4, 5, h's 0, 1, 4, 5 | g's 2, 3, 6, 7, h's.
    const __m512i sc_a = _mm512_maskz_unpacklo_epi32(0xffff, sc_lo, sc_hi);
    const __m512i sc_b = _mm512_maskz_unpackhi_epi32(0xffff, sc_lo, sc_hi);
    const __m512i first4 = _mm512_setr_epi64(0, 4, 1, 5, 8, 12, 9, 13);
    const __m512i last4 = _mm512_setr_epi64(2, 6, 3, 7, 10, 14, 11, 15);
    _mm512_store_si512(head.scales[0], _mm512_permutex2var_epi64(sc_a, first4, sc_b));
    _mm512_store_si512(head.scales[4], _mm512_permutex2var_epi64(sc_a, last4, sc_b));
    // Mins: units 2q and 2q + 1 of a group are pair q's 8 rows; bytes widened to 16 bits, g's rows
    // in lanes 0..7 and h's in 8..15, then put in q4_k_order.
    const __m512i m_a = _mm512_maskz_unpacklo_epi32(0xffff, mins_lo, mins_hi);
    const __m512i m_b = _mm512_maskz_unpackhi_epi32(0xffff, mins_lo, mins_hi);
    head.mins[0] = q4_k_mins16<0>(m_a, order);
    head.mins[1] = q4_k_mins16<0>(m_b, order);
    head.mins[2] = q4_k_mins16<1>(m_a, order);
    head.mins[3] = q4_k_mins16<1>(m_b, order);
  }
  template <int kLane>  // 128-bit lanes kLane (g's) and kLane + 2 (h's) of v, widened, in q4_k_order
  static __m512i q4_k_mins16(__m512i v, __m512i order) {
    const __m512i pair = _mm512_maskz_shuffle_i64x2(0xff, v, v, kLane | (kLane + 2) << 2);
    return _mm512_maskz_permutexvar_epi32(0xffff, order, _mm512_cvtepu8_epi16(low_half(pair)));
  }
  // Sub-block j's scales of the 16 rows, each as a pair of 16-bit values per lane of q4_k_order.
  static __m512i q4_k_scale16(const Q4kHead16& head, int j) {
    const __m512i spread = _mm512_set_epi8(  // highest byte first; per 128 bits rows 6, 7 | 2, 3 | 4, 5 | 0, 1
        -1, 15, -1, 15, -1, 14, -1, 14, -1, 7, -1, 7, -1, 6, -1, 6,      //
        -1, 13, -1, 13, -1, 12, -1, 12, -1, 5, -1, 5, -1, 4, -1, 4,      //
        -1, 11, -1, 11, -1, 10, -1, 10, -1, 3, -1, 3, -1, 2, -1, 2,      //
        -1, 9, -1, 9, -1, 8, -1, 8, -1, 1, -1, 1, -1, 0, -1, 0);
    return _mm512_shuffle_epi8(
        _mm512_maskz_broadcast_i32x4(0xffff, _mm_load_si128(reinterpret_cast<const __m128i*>(head.scales[j]))), spread);
  }
  template <int T, DType D = DType::Q4_K>
  static void q4_k_x16(const uint8_t* g, size_t group_bytes, const ActivationBlock* x, const int16_t* sums,
                       int64_t blocks, float* y, int64_t ldy, bool prefetch) {
    // The accumulators live in y (in q4_k_order until the end): with T = 8 the integer sums take
    // 24 of the 32 registers, and the compiler spilled them to keep the accumulators in the rest.
    for (int t = 0; t < T; ++t) _mm512_storeu_ps(y + t * ldy, _mm512_setzero_ps());
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int64_t b = 0; b < blocks; b += 8, g += QuantLaneAvx2::group_bytes<D>) {
      const uint8_t* h = g + group_bytes;
      if (prefetch) prefetch_next_pair<QuantLaneAvx2::group_bytes<D>>(g, h, group_bytes);
      Q4kHead16 head;
      q4_k_head16(g, h, head);
      __m512i dots[T];
      for (int t = 0; t < T; ++t) dots[t] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const size_t at = 128 + 256 * (j / 2);
        const __m512i scale = q4_k_scale16(head, j);
        __m512i sub_g[T], sub_h[T];
        for (int t = 0; t < T; ++t) sub_g[t] = sub_h[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          __m512i qg = _mm512_loadu_si512(g + at + 64 * k), qh = _mm512_loadu_si512(h + at + 64 * k);
          if (j % 2) {
            qg = _mm512_srli_epi16(qg, 4);
            qh = _mm512_srli_epi16(qh, 4);
          }
          qg = _mm512_and_si512(qg, low4);
          qh = _mm512_and_si512(qh, low4);
          if constexpr (D == DType::Q5_K) {
            qg = with_high_bit(qg, g + quant::kQ5_KHighBits + 64 * k, j);
            qh = with_high_bit(qh, h + quant::kQ5_KHighBits + 64 * k, j);
          }
          for (int t = 0; t < T; ++t) {
            const __m512i a = bytes8(x[t * blocks + b + j].q + 8 * k);
            sub_g[t] = _mm512_dpbusd_epi32(sub_g[t], qg, a);
            sub_h[t] = _mm512_dpbusd_epi32(sub_h[t], qh, a);
          }
          if ((k + 1) % chunks_per_sum<D> == 0)
            for (int t = 0; t < T; ++t) {
              dots[t] = _mm512_dpwssd_epi32(dots[t], _mm512_packs_epi32(sub_g[t], sub_h[t]), scale);
              sub_g[t] = sub_h[t] = _mm512_setzero_si512();
            }
        }
      }
      for (int t = 0; t < T; ++t) {
        __m512i min_sum = _mm512_setzero_si512();
        for (int q = 0; q < 4; ++q) {
          int32_t pair;
          std::memcpy(&pair, sums + t * blocks + b + 2 * q, 4);
          min_sum = _mm512_dpwssd_epi32(min_sum, head.mins[q], _mm512_set1_epi32(pair));
        }
        const __m512 ad = _mm512_set1_ps(x[t * blocks + b].d);
        __m512 acc = _mm512_loadu_ps(y + t * ldy);
        acc = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, dots[t]), _mm512_mul_ps(head.d, ad), acc);
        acc = _mm512_fnmadd_ps(_mm512_maskz_cvtepi32_ps(0xffff, min_sum), _mm512_mul_ps(head.dmin, ad), acc);
        _mm512_storeu_ps(y + t * ldy, acc);
      }
    }
    for (int t = 0; t < T; ++t)
      _mm512_storeu_ps(y + t * ldy, _mm512_maskz_permutexvar_ps(0xffff, q4_k_order(), _mm512_loadu_ps(y + t * ldy)));
  }

  // The codebook and ternary types against several tokens (quant_matmul_impl's codebook_panels): each
  // row's super-blocks decoded once per call into panels (QuantLaneAvx2::codebook_part's
  // magnitudes and signs made int8 q, the 16 integer factors spread over vpmaddwd's 16-bit lanes,
  // the excess 128 sum_j scale[j] sum q and the float factor), which every tile of tokens reads:
  // per 64 values vpmaddubsw of the activations + 128 (a ^ 0x80, unsigned) by q (|q| <= 62: a pair
  // is at most 2 * 255 * 62 = 31,620, no saturation), vpmaddwd by the factors, vpaddd. The excess
  // is subtracted once per super-block: the same exact integers as codebook_sums, then the same
  // float steps in the same order (codebook_tile's): the same bits.
  struct alignas(64) CodebookPanel {
    int8_t q[256];
    int16_t scales[4][32];  // per 64 values c: lane k holds the factor of values 2k, 2k + 1 (16 (k / 8) ..)
    int32_t excess;
    float factor;
  };
  template <DType kType>
  static void codebook_panel(const uint8_t* w, CodebookPanel* panel) {
    CodebookFields fields;
    codebook_fields<kType>(w, fields);
    __m256i excess = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const CodebookPart part = codebook_part<kType>(w, j, fields);
      const __m256i q = _mm256_sign_epi8(part.magnitudes, part.signs);
      _mm256_store_si256(reinterpret_cast<__m256i*>(panel->q + 32 * j), q);
      _mm256_store_si256(reinterpret_cast<__m256i*>(&panel->scales[j / 2][16 * (j % 2)]), part.scales);
      excess = _mm256_add_epi32(excess, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), part.scales));
    }
    panel->excess = 128 * sum_lanes(excess);
    const uint16_t d = quant::codebook_half_bits<kType>(w);
    panel->factor = half(reinterpret_cast<const uint8_t*>(&d)) * quant::codebook_factor_scale<kType>();
  }
  // Four tokens' sums of 16 lanes each, in one vector (lane t: token t's).
  static __m128i sum4(const __m512i* v) {
    __m128i h[4];
    for (int t = 0; t < 4; ++t) {
      const __m256i s = _mm256_add_epi32(low_half(v[t]), high_half(v[t]));
      h[t] = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    }
    return _mm_hadd_epi32(_mm_hadd_epi32(h[0], h[1]), _mm_hadd_epi32(h[2], h[3]));
  }
  // R rows' panels (row r's super-blocks at panels + r * superblocks) times T tokens (token t's
  // activation blocks at x + t * blocks): acc[r][t] += each super-block's product, in order.
  template <int R, int T>
  static void codebook_panel_tile(const CodebookPanel* panels, int64_t superblocks, const ActivationBlock* x,
                                  int64_t blocks, float (&acc)[R][T]) {
    const __m512i bias = _mm512_set1_epi8(char(0x80));
    for (int64_t sb = 0; sb < superblocks; ++sb) {
      __m512i sums[R][T];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < T; ++t) sums[r][t] = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        __m512i a[T];
        for (int t = 0; t < T; ++t) {
          const ActivationBlock* ab = x + t * blocks + 8 * sb + 2 * c;
          const __m512i low = _mm512_maskz_loadu_epi32(0x00ff, ab[0].q);  // block 2c's 32 bytes, zeros above
          a[t] = _mm512_xor_si512(_mm512_maskz_inserti64x4(0xff, low, load32(ab[1].q), 1), bias);
        }
        for (int r = 0; r < R; ++r) {
          const CodebookPanel& p = panels[r * superblocks + sb];
          const __m512i q = _mm512_load_si512(p.q + 64 * c), scales = _mm512_load_si512(p.scales[c]);
          for (int t = 0; t < T; ++t)
            sums[r][t] = _mm512_add_epi32(sums[r][t], _mm512_madd_epi16(_mm512_maddubs_epi16(a[t], q), scales));
        }
      }
      for (int r = 0; r < R; ++r) {
        const CodebookPanel& p = panels[r * superblocks + sb];
        int32_t exact[T];
        if constexpr (T == 4) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(exact), _mm_sub_epi32(sum4(sums[r]), _mm_set1_epi32(p.excess)));
        } else {
          for (int t = 0; t < T; ++t) exact[t] = sum_lanes(_mm256_add_epi32(low_half(sums[r][t]), high_half(sums[r][t]))) - p.excess;
        }
        for (int t = 0; t < T; ++t) acc[r][t] = std::fma(float(exact[t]), p.factor * x[t * blocks + 8 * sb].d, acc[r][t]);
      }
    }
  }
};

}  // namespace
}  // namespace crossmoe::kernels
