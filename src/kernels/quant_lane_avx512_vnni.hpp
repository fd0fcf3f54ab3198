#pragma once
// The 512-bit integer lane of quant_matmul_impl.hpp for CPUs with AVX512-VNNI: vpdpbusd multiplies
// 64 unsigned by 64 signed bytes and adds each 4 products into a 32-bit lane in one instruction
// (AVX2 needs vpmaddubsw, vpmaddwd and vpaddd per 32 bytes). Included only by
// matmul_avx512_vnni.cpp, compiled with the AVX-512 and VNNI flags.
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
  template <int T>
  static void q8_0_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m512i sign_bit = _mm512_set1_epi8(char(0x80));
    for (int64_t b = 0; b < blocks; ++b, g += 8 * 34) {
      // One token reads each group once from memory: every line of the block 32 blocks (8.5 KiB)
      // ahead is asked for. 8 blocks ahead, as QuantLaneAvx2::q8_0_x8 asks, streamed a large
      // matrix 1.02-1.30x slower (median 1.12x) in a one-thread scratch loop that took turns
      // between distances (docs/benchmarks.md, sixth round).
      if constexpr (T == 1)
        for (int line = 0; line < 8 * 34; line += 64) __builtin_prefetch(g + 32 * (8 * 34) + line);
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
      __m512i sums[T];
      for (int t = 0; t < T; ++t) sums[t] = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(g + 16 + 64 * k), sign_bit);
        for (int t = 0; t < T; ++t) sums[t] = _mm512_dpbusd_epi32(sums[t], w, bytes8(x[t * blocks + b].q + 8 * k));
      }
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        const __m256i rows = _mm256_sub_epi32(_mm256_hadd_epi32(low_half(sums[t]), high_half(sums[t])),
                                              _mm256_set1_epi32(128 * a.sum));
        const __m256 da = _mm256_mul_ps(d, _mm256_broadcast_ss(&a.d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), da, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
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
  template <int T>
  static void q4_k_x8(const uint8_t* g, const ActivationBlock* x, const int16_t* sums, int64_t blocks, float* y,
                      int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m512i low4 = _mm512_set1_epi8(15);
    for (int64_t b = 0; b < blocks; b += 8, g += 8 * 144) {
      // One token: the lines of the group two super-blocks (2.25 KiB) ahead, as QuantLaneAvx2.
      if constexpr (T == 1)
        for (int line = 0; line < 8 * 144; line += 64) __builtin_prefetch(g + 2 * (8 * 144) + line);
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
        __m512i even[T], odd[T];  // sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles)
        for (int t = 0; t < T; ++t) even[t] = odd[t] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m512i raw = _mm512_loadu_si512(q + 64 * k);
          const __m512i lo = _mm512_and_si512(raw, low4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
          for (int t = 0; t < T; ++t) {
            const ActivationBlock* a = x + t * blocks + b + 2 * p;
            even[t] = _mm512_dpbusd_epi32(even[t], lo, bytes8(a[0].q + 8 * k));
            odd[t] = _mm512_dpbusd_epi32(odd[t], hi, bytes8(a[1].q + 8 * k));
          }
        }
        const __m512i s_even = q4_k_scale(scales, 2 * p), s_odd = q4_k_scale(scales, 2 * p + 1);
        for (int t = 0; t < T; ++t)
          dots[t] = _mm512_add_epi32(dots[t], _mm512_add_epi32(_mm512_madd_epi16(even[t], s_even),
                                                               _mm512_madd_epi16(odd[t], s_odd)));
      }
      for (int t = 0; t < T; ++t)
        acc[t] = q4_k_finish(head, low_half(dots[t]), high_half(dots[t]), sums + t * blocks + b, &x[t * blocks + b].d,
                             acc[t]);
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }
};

}  // namespace
}  // namespace crossmoe::kernels
