#pragma once
// The 256-bit integer lane of quant_matmul_impl.hpp: AVX2 byte products (vpmaddubsw, which
// multiplies unsigned by signed bytes, then vpmaddwd to 32 bits). Included by the AVX2 file and,
// for now, the AVX-512 one (where the same instructions get EVEX encodings), each with its flags.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace crossmoe::kernels {
namespace {

struct QuantLaneAvx2 {
  using Acc = __m256;
  static Acc zero() { return _mm256_setzero_ps(); }
  static float sum(Acc v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float half(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
  }
  // 16-bit pair sums of u8 x s8 products, widened to eight 32-bit sums.
  static __m256i pair_sums(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }
  // The block's two steps multiply in every lane (the same product as in a scalar register), so
  // the weight's step is broadcast once per row and the activation's read straight from memory.
  using Scale = __m256;
  static Scale splat(float v) { return _mm256_set1_ps(v); }
  static Acc madd_q8(const int8_t* w, const int8_t* a, Scale dw, const float* da, Acc acc) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
    // Signed x signed through unsigned x signed: |w| times a with w's sign. |w| <= 128 and
    // |a| <= 127, so a pair sums to at most 32512 and vpmaddubsw never saturates.
    const __m256i sums = pair_sums(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(av, wv));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(dw, _mm256_broadcast_ss(da)), acc);
  }
  using Int = __m256i;
  static Int int_zero() { return _mm256_setzero_si256(); }
  // Nibbles (<= 15) times activations (|a| <= 127): a pair sums to at most 3810 in vpmaddubsw's
  // 16 bits, and vpmaddwd applies the 6-bit scale to pairs of those (<= 480,060 per lane).
  static Int madd_q4(const uint8_t* q, const int8_t* a_lo, const int8_t* a_hi, int s_lo, int s_hi, Int acc) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    const __m256i nibble = _mm256_set1_epi8(15);
    const __m256i lo = _mm256_and_si256(bytes, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
    const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a_lo)));
    const __m256i p_hi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a_hi)));
    const __m256i sums = _mm256_add_epi32(_mm256_madd_epi16(p_lo, _mm256_set1_epi16(int16_t(s_lo))),
                                          _mm256_madd_epi16(p_hi, _mm256_set1_epi16(int16_t(s_hi))));
    return _mm256_add_epi32(acc, sums);
  }
  // Mins (<= 63) times block sums (|s| <= 4064): pairs sum to at most 512,064 in 32 bits; the
  // four pair sums fill the low half of an Int.
  static Int madd_mins(const uint8_t* m, const int16_t* s) {
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
    const __m128i s16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    return _mm256_zextsi128_si256(_mm_madd_epi16(m16, s16));
  }
  static Acc madd_int(Int sums, float scale, Acc acc) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(scale), acc);
  }
};

}  // namespace
}  // namespace crossmoe::kernels
