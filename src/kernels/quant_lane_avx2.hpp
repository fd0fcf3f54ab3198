#pragma once
// The 256-bit integer lane of quant_matmul_impl.hpp: AVX2 byte products (vpmaddubsw, which
// multiplies unsigned by signed bytes, then vpmaddwd to 32 bits). Included by the AVX2 file and,
// for now, the AVX-512 one (where the same instructions get EVEX encodings), each with its flags.
#include <immintrin.h>

#include <array>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.hpp"
#include "util/quant.hpp"

namespace crossmoe::kernels {
namespace {

struct QuantLaneAvx2 {
  // kernels::quantize_activations 32 values at a time, to the same bytes: the maximum is exact in
  // any order, and the product, the rounding to nearest (even) and the clamp are the portable
  // code's operations on each value.
  static void quantize_activations(const float* x, int64_t n, int64_t group, ActivationBlock* out) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 low = _mm256_set1_ps(-127.0f), high = _mm256_set1_ps(127.0f);
    const __m256i byte_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t g = 0; g < n / group; ++g, x += group) {
      __m256 m = _mm256_setzero_ps();
      for (int64_t i = 0; i < group; i += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), magnitude), m);
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
      const __m256 inverse = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      for (int64_t b = 0; b < group / 32; ++b) {
        ActivationBlock& a = *out++;
        a.d = amax / 127.0f;
        __m256i q[4];
        for (int k = 0; k < 4; ++k) {
          const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * b + 8 * k), inverse),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          q[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, low), high));
        }
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        a.sum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1)));
        // The packs interleave 4-value runs of the four vectors per 128-bit half; put them in order.
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q), _mm256_permutevar8x32_epi32(bytes, byte_order));
      }
    }
  }
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
  static __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  // Eight 32-bit partial sums of sum_i w[i] * a[i] over 32 int8 pairs.
  static __m256i q8_sums(__m256i w, __m256i a) {
    // Signed x signed through unsigned x signed: |w| times a with w's sign. |w| <= 128 and
    // |a| <= 127, so a pair sums to at most 32512 and vpmaddubsw never saturates.
    return pair_sums(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  }
  static Acc madd_q8(const int8_t* w, const int8_t* a, Scale dw, const float* da, Acc acc) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q8_sums(load32(w), load32(a))), _mm256_mul_ps(dw, _mm256_broadcast_ss(da)),
                           acc);
  }
  // IQ4_NL's 16 values (quant::kIq4NlValues) in both 128-bit lanes: vpshufb looks nibbles up in it.
  static __m256i iq4_nl_values() {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(quant::kIq4NlValues)));
  }
  // MXFP4's 16 values (quant::kMxfp4Values), the same way.
  static __m256i mxfp4_values() {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(quant::kMxfp4Values)));
  }
  // Q4_0 / Q5_0 / IQ4_NL / MXFP4 (util/quant.hpp): the block's values as Q8_0's int8
  // (quant::small_block_values) in a register, then Q8_0's dot against each token's activation
  // block, summed across exactly. Q4_1 / Q5_1: the same bytes after d and m, their q as stored.
  // The 32 bits of a little-endian word at p as 32 bytes: 0xff in byte i where bit i is set (byte i
  // takes the word's byte i / 8, keeps bit i % 8, and compares).
  static __m256i bits_to_bytes(const uint8_t* p) {
    int32_t word;
    std::memcpy(&word, p, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(word), _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  }
  template <DType kType>
  static __m256i small_block_values(const uint8_t* block) {
    constexpr bool kFiveBits = kType == DType::Q5_0 || kType == DType::Q5_1;
    constexpr int kHeader = quant::small_block_scale_bytes(kType) + (quant::has_block_min(kType) ? 2 : 0);
    constexpr char kBias = quant::has_block_min(kType) ? 0 : kFiveBits ? 16 : 8;
    const __m128i low = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + kHeader + (kFiveBits ? 4 : 0)));
    // Values 0..15 are the low nibbles, 16..31 the high ones.
    __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(low, 4), low), _mm256_set1_epi8(15));
    if constexpr (kType == DType::IQ4_NL) return _mm256_shuffle_epi8(iq4_nl_values(), q);
    if constexpr (kType == DType::MXFP4) return _mm256_shuffle_epi8(mxfp4_values(), q);
    if constexpr (kFiveBits)  // bit i of qh: 16 in byte i
      q = _mm256_or_si256(q, _mm256_and_si256(bits_to_bytes(block + kHeader), _mm256_set1_epi8(16)));
    return kBias ? _mm256_sub_epi8(q, _mm256_set1_epi8(kBias)) : q;
  }
  template <DType kType, int T>
  static void small_block_sums(const uint8_t* block, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    const __m256i w = small_block_values<kType>(block);
    int t = 0;
    for (; t + 4 <= T; t += 4) {  // 4 tokens' sums across at once (integers: any order, the same sums)
      __m256i s[4];
      for (int k = 0; k < 4; ++k) s[k] = q8_sums(w, load32(x[(t + k) * blocks].q));
      const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sums + t),
                       _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
    }
    for (; t < T; ++t) sums[t] = sum_lanes(q8_sums(w, load32(x[t * blocks].q)));
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

  // Q6_K (util/quant.hpp): quarter k of half h is 32 values, the 6-bit q of activation block 4h + k,
  // sub-blocks 8h + 2k and 8h + 2k + 1. vpmaddubsw pairs q (<= 63) with a (|a| <= 127), and
  // 32 with a: their difference, (q - 32) a over two values, is at most 8128 in 16 bits, and
  // vpmaddwd applies the signed 8-bit scales of the two sub-blocks (the low and high 8 words).
  // The per-token sums stay in 8 lanes, added across once per super-block.
  static __m256i q6_k_quarter(__m256i ql, __m256i qh, int k) {
    const __m256i low4 = _mm256_set1_epi8(15), top2 = _mm256_set1_epi8(0x30);
    const __m256i nibbles = _mm256_and_si256(k < 2 ? ql : _mm256_srli_epi16(ql, 4), low4);
    const __m256i high = k == 0 ? _mm256_slli_epi16(qh, 4) : k == 1 ? _mm256_slli_epi16(qh, 2)
                         : k == 2 ? qh : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(nibbles, _mm256_and_si256(high, top2));
  }
  static int32_t sum_lanes(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
  }
  // Q5_K (util/quant.hpp): sub-block j is 32 values, activation block j. Its 5-bit q is the nibble
  // of byte 48 + 32 (j / 2) + i with bit j of qh byte i (qh shifted right by one per sub-block,
  // bit 0 moved to bit 4). vpmaddubsw pairs q (<= 31) with a (|a| <= 127): at most 7874 in 16
  // bits; vpmaddwd applies the 6-bit scale.
  template <int T>
  static void q5_k_sums(const uint8_t* w, const uint8_t* sc, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    const __m256i low4 = _mm256_set1_epi8(15), bit4 = _mm256_set1_epi8(16);
    __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16));
    __m256i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 48 + 32 * (j / 2)));
      const __m256i nibbles = _mm256_and_si256(j % 2 == 0 ? qs : _mm256_srli_epi16(qs, 4), low4);
      const __m256i q = _mm256_or_si256(nibbles, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
      qh = _mm256_srli_epi16(qh, 1);
      const __m256i scale = _mm256_set1_epi16(int16_t(sc[j]));
      for (int t = 0; t < T; ++t) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t * blocks + j].q));
        acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), scale));
      }
    }
    for (int t = 0; t < T; ++t) sums[t] = sum_lanes(acc[t]);
  }

  // The codebook and ternary types (util/quant.hpp): sub-block j of a super-block (32 values) as
  // byte magnitudes and signs (+-1, or the value itself: vpsignb's operand) and its two integer
  // factors in 16-bit lanes (values 0..15 in the low 128 bits, 16..31 in the high), so that
  // vpmaddubsw(magnitudes, sign(a, signs)) (magnitudes <= 62, |a| <= 127: at most 15,748, no
  // saturation) and vpmaddwd by the factors give the exact sum of the sub-block's q a times scale.
  struct CodebookPart {
    __m256i magnitudes, signs, scales;
  };
  static __m256i grid8(uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
    return _mm256_setr_epi64x(int64_t(a), int64_t(b), int64_t(c), int64_t(d));
  }
  // 8 grid points of 4 bytes (IQ3_XXS's, IQ3_S's) at indices i[0..7].
  template <size_t N, class Index>
  static __m256i grid4(const std::array<uint32_t, N>& g, const Index* i) {
    return _mm256_setr_epi32(int(g[i[0]]), int(g[i[1]]), int(g[i[2]]), int(g[i[3]]), int(g[i[4]]), int(g[i[5]]),
                             int(g[i[6]]), int(g[i[7]]));
  }
  // 4 sign bytes (bit k of byte l: value 8 l + k negative) as +1 / -1 bytes.
  static __m256i sign_bytes(const uint8_t* signs) { return _mm256_or_si256(bits_to_bytes(signs), _mm256_set1_epi8(1)); }
  // A super-block's 16 integer factors (16-bit lanes, factor k for values 16 k .. 16 k + 15) as two
  // vectors of them doubled into 32-bit lanes (k = 0..3, 8..11 and k = 4..7, 12..15), from which
  // two_scales takes sub-block j's pair by one vpermd: no trip through memory per sub-block.
  struct FactorPairs {
    __m256i low, high;
  };
  static FactorPairs factor_pairs(__m256i factors) {
    return {_mm256_unpacklo_epi16(factors, factors), _mm256_unpackhi_epi16(factors, factors)};
  }
  // 32-bit lanes holding a 16-bit value with that value in both halves (a vpmaddwd operand).
  static __m256i doubled_words(__m256i v) { return _mm256_or_si256(v, _mm256_slli_epi32(v, 16)); }
  // Factor 2 j for values 0..15 of sub-block j, 2 j + 1 for 16..31.
  static __m256i two_scales(const FactorPairs& pairs, int j) {
    const int at = 4 * (j / 4) + 2 * (j % 2);
    return _mm256_permutevar8x32_epi32(j / 2 % 2 == 0 ? pairs.low : pairs.high,
                                       _mm256_setr_epi32(at, at, at, at, at + 1, at + 1, at + 1, at + 1));
  }
  // The 8 bytes at p spread over 16-bit lanes by a vpshufb pattern.
  static __m256i spread8(const uint8_t* p, __m256i pattern) {
    int64_t bits;
    std::memcpy(&bits, p, 8);
    return _mm256_shuffle_epi8(_mm256_set1_epi64x(bits), pattern);
  }
  // Each 16-bit lane times up, plus its product by down's high half (a right shift: AVX2's 16-bit
  // lanes have no variable shifts; one of the two is 0 per lane), masked.
  static __m256i shift_lanes(__m256i v, __m256i up, __m256i down, int mask) {
    const __m256i shifted = _mm256_or_si256(_mm256_mullo_epi16(v, up), _mm256_mulhi_epu16(v, down));
    return _mm256_and_si256(shifted, _mm256_set1_epi16(int16_t(mask)));
  }
  // Bits 3 l .. 3 l + 2 of each lane's word (l = lane % 4) at bits 8..10: IQ1_S's index bits, IQ1_M's factors.
  static __m256i three_bit_fields(__m256i words) {
    return shift_lanes(words, _mm256_setr_epi16(256, 32, 4, 0, 256, 32, 4, 0, 256, 32, 4, 0, 256, 32, 4, 0),
                       _mm256_setr_epi16(0, 0, 0, -32768, 0, 0, 0, -32768, 0, 0, 0, -32768, 0, 0, 0, -32768), 0x700);
  }
  // Bytes of 7 sign bits (bit 7 clear) with the eighth that makes the count of minus signs even
  // (quant::even_signs): the parity folded down to bit 0 of each byte (the 32-bit shifts move other
  // bytes' bits only into bits 1..7), then put at bit 7.
  static __m256i even_sign_bytes(__m256i seven) {
    __m256i parity = _mm256_xor_si256(seven, _mm256_srli_epi32(seven, 4));
    parity = _mm256_xor_si256(parity, _mm256_srli_epi32(parity, 2));
    parity = _mm256_xor_si256(parity, _mm256_srli_epi32(parity, 1));
    return _mm256_or_si256(seven, _mm256_slli_epi32(_mm256_and_si256(parity, _mm256_set1_epi8(1)), 7));
  }
  // 16 nibbles (the low then the high nibble of each of the 8 bytes at p) as factors 2 n + 1.
  static __m256i nibble_factors(const uint8_t* p) {
    constexpr char z = char(0x80);
    const __m256i pairs = _mm256_setr_epi8(0, z, 0, z, 1, z, 1, z, 2, z, 2, z, 3, z, 3, z,
                                           4, z, 4, z, 5, z, 5, z, 6, z, 6, z, 7, z, 7, z);
    const __m256i up = _mm256_setr_epi16(16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1, 16, 1);
    return _mm256_or_si256(_mm256_srli_epi16(shift_lanes(spread8(p, pairs), up, _mm256_setzero_si256(), 0xf0), 3),
                           _mm256_set1_epi16(1));
  }
  // 16 grid indices: the 16 bytes at low with their high bits (in place, in 16-bit lanes).
  static __m256i grid_indices(const uint8_t* low, __m256i high) {
    return _mm256_or_si256(_mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(low))), high);
  }
  // Values that carry their own signs (IQ1's 8 g +- 1, the ternary types' digits).
  static CodebookPart signed_part(__m256i q, __m256i scales) { return {_mm256_abs_epi8(q), q, scales}; }
  // What the types with bit fields scattered over the super-block keep there, taken out for all 8
  // sub-blocks at once in vector lanes (codebook_fields): the grid indices whose high bits lie apart
  // from their low bytes (IQ2_S, IQ3_S, IQ1_S, IQ1_M; 4 per sub-block, 8 for IQ3_S, in value order),
  // the factors (per 16 values: IQ2_XS, IQ2_S, IQ1_M; per sub-block: IQ3_XXS, IQ1_S as 8 s) in
  // registers, IQ3_XXS's sign bytes, IQ1_S's factors with its deltas' signs, the ternary types' digits
  // (for the panels; codebook_sums keeps them in registers). Unused by the others.
  struct CodebookFields {
    FactorPairs pairs;  // the factors per 16 values of IQ2_XS, IQ2_S, IQ1_M
    alignas(32) uint16_t index[64];
    __m256i sub_block_factors;  // IQ3_XXS's and IQ1_S's (as 8 s) factor per sub-block, doubled into 32-bit lanes
    int16_t signed_factor[8];
    alignas(32) uint8_t signs[32];  // IQ3_XXS's sign bytes, one per 8 values, as IQ2_S / IQ3_S store theirs
    alignas(32) int8_t digits[256];  // the ternary types' digits u (ternary_digits), for codebook_part
  };
  // Sub-block j's factor in every 16-bit lane.
  static __m256i one_scale(const CodebookFields& f, int j) {
    return _mm256_permutevar8x32_epi32(f.sub_block_factors, _mm256_set1_epi32(j));
  }
  template <DType kType>
  static void codebook_fields(const uint8_t* w, CodebookFields& f) {
    const auto store = [](void* to, __m256i v) { _mm256_storeu_si256(static_cast<__m256i*>(to), v); };
    const auto store128 = [](void* to, __m128i v) { _mm_storeu_si128(static_cast<__m128i*>(to), v); };
    // A 16-bit word per 4 lanes (IQ1: word j, in the 8 bytes read, for sub-block j's 4 indices);
    // a byte per 4 lanes (IQ2_S: byte j), or per 8 (IQ3_S).
    const __m256i words4 = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                                            4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7);
    constexpr char z = char(0x80);  // vpshufb: a zero byte
    const __m256i zero = _mm256_setzero_si256();
    if constexpr (kType == DType::IQ1_S) {
      // Index l of sub-block j: byte 4 j + l, then bits 3 l .. 3 l + 2 of word j above it.
      for (int half = 0; half < 2; ++half)
        store(f.index + 16 * half, grid_indices(w + 2 + 16 * half, three_bit_fields(spread8(w + 34 + 8 * half, words4))));
      // Sub-block j's factor s = 2 h + 1 (h = bits 12..14 of word j) as 8 s, and s with the delta's
      // sign (bit 15; vpsignw's operand made odd: never 0).
      const __m128i words = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 34));
      const __m128i factors = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(words, 11), _mm_set1_epi16(14)), _mm_set1_epi16(1));
      f.sub_block_factors = doubled_words(_mm256_cvtepu16_epi32(_mm_slli_epi16(factors, 3)));
      store128(f.signed_factor, _mm_sign_epi16(factors, _mm_or_si128(words, _mm_set1_epi16(1))));
    } else if constexpr (kType == DType::IQ1_M) {
      // Index l of sub-block j: byte 4 j + l, then bits 4 l .. 4 l + 2 of word j (the nibble's top
      // bit is the delta's sign).
      const __m256i up = _mm256_setr_epi16(256, 16, 1, 0, 256, 16, 1, 0, 256, 16, 1, 0, 256, 16, 1, 0);
      const __m256i down = _mm256_setr_epi16(0, 0, 0, 4096, 0, 0, 0, 4096, 0, 0, 0, 4096, 0, 0, 0, 4096);
      for (int half = 0; half < 2; ++half)
        store(f.index + 16 * half, grid_indices(w + 16 * half, shift_lanes(spread8(w + 32 + 8 * half, words4), up, down, 0x700)));
      // The 16 factors 2 s + 1: s = bits 3 l .. 3 l + 2 of word k / 4 at 48 (l = k % 4).
      f.pairs = factor_pairs(_mm256_or_si256(_mm256_srli_epi16(three_bit_fields(spread8(w + 48, words4)), 7), _mm256_set1_epi16(1)));
    } else if constexpr (kType == DType::IQ2_S) {
      // Index l of sub-block j: byte 4 j + l, then bits 2 l, 2 l + 1 of byte j (at 66) above it.
      const __m256i bytes4 = _mm256_setr_epi8(0, z, 0, z, 0, z, 0, z, 1, z, 1, z, 1, z, 1, z,
                                              2, z, 2, z, 2, z, 2, z, 3, z, 3, z, 3, z, 3, z);
      const __m256i up = _mm256_setr_epi16(256, 64, 16, 4, 256, 64, 16, 4, 256, 64, 16, 4, 256, 64, 16, 4);
      for (int half = 0; half < 2; ++half)
        store(f.index + 16 * half, grid_indices(w + 2 + 16 * half, shift_lanes(spread8(w + 66 + 4 * half, bytes4), up, zero, 0x300)));
      f.pairs = factor_pairs(nibble_factors(w + 74));
    } else if constexpr (kType == DType::IQ2_XS) {
      f.pairs = factor_pairs(nibble_factors(w + 66));
    } else if constexpr (kType == DType::IQ3_XXS) {
      // Sub-block j's 32-bit word (at 66 + 4 j): 4 fields of 7 sign bits (field l at 7 l, moved up
      // by l to byte l), its factor's 4 bits on top. (Reading IQ2_XXS's words, every other one of
      // its 64 bytes, this way was slower than its 128-entry table: 0.91x.)
      const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 66));
      __m256i seven = _mm256_and_si256(words, _mm256_set1_epi32(0x7f));
      for (int l = 1; l < 4; ++l)
        seven = _mm256_or_si256(seven, _mm256_and_si256(_mm256_slli_epi32(words, l), _mm256_set1_epi32(0x7f << 8 * l)));
      store(f.signs, even_sign_bytes(seven));
      const __m256i factors = _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(words, 28), 1), _mm256_set1_epi32(1));
      f.sub_block_factors = doubled_words(factors);
    } else if constexpr (kType == DType::TQ1_0 || kType == DType::TQ2_0) {
      __m256i u[8];
      ternary_digits<kType>(w, u);
      for (int j = 0; j < 8; ++j) store(f.digits + 32 * j, u[j]);
    } else if constexpr (kType == DType::IQ3_S) {
      // Index m of sub-block j: byte 8 j + m, then bit m of byte j (at 66) as bit 8.
      const __m256i bytes8 = _mm256_setr_epi8(0, z, 0, z, 0, z, 0, z, 0, z, 0, z, 0, z, 0, z,
                                              1, z, 1, z, 1, z, 1, z, 1, z, 1, z, 1, z, 1, z);
      const __m256i up = _mm256_setr_epi16(256, 128, 64, 32, 16, 8, 4, 2, 256, 128, 64, 32, 16, 8, 4, 2);
      for (int pair = 0; pair < 4; ++pair)
        store(f.index + 16 * pair, grid_indices(w + 2 + 16 * pair, shift_lanes(spread8(w + 66 + 2 * pair, bytes8), up, zero, 0x100)));
    }
  }
  static __m256i iq1_grid(const uint16_t* index, int j) {
    const auto& g = quant::kIq1SGrid;
    const uint16_t* i = index + 4 * j;
    return grid8(g[i[0]], g[i[1]], g[i[2]], g[i[3]]);
  }
  template <DType kType>
  static CodebookPart codebook_part(const uint8_t* w, int j, const CodebookFields& f) {
    using quant::kEvenSignBytes;
    if constexpr (kType == DType::IQ2_XXS) {
      uint32_t word;
      std::memcpy(&word, w + 2 + 8 * j + 4, 4);
      const __m256i signs = grid8(kEvenSignBytes[word & 127], kEvenSignBytes[word >> 7 & 127],
                                  kEvenSignBytes[word >> 14 & 127], kEvenSignBytes[word >> 21 & 127]);
      const auto& g = quant::kIq2XxsGrid;
      const uint8_t* index = w + 2 + 8 * j;
      return {grid8(g[index[0]], g[index[1]], g[index[2]], g[index[3]]), signs,
              _mm256_set1_epi16(int16_t(2 * int(word >> 28) + 1))};
    } else if constexpr (kType == DType::IQ3_XXS) {
      return {grid4(quant::kIq3XxsGrid, w + 2 + 8 * j), sign_bytes(f.signs + 4 * j), one_scale(f, j)};
    } else if constexpr (kType == DType::IQ2_XS) {
      uint16_t v[4];
      std::memcpy(v, w + 2 + 8 * j, 8);
      const auto& g = quant::kIq2XsGrid;
      return {grid8(g[v[0] & 511], g[v[1] & 511], g[v[2] & 511], g[v[3] & 511]),
              grid8(kEvenSignBytes[v[0] >> 9], kEvenSignBytes[v[1] >> 9],
                    kEvenSignBytes[v[2] >> 9], kEvenSignBytes[v[3] >> 9]),
              two_scales(f.pairs, j)};
    } else if constexpr (kType == DType::IQ2_S) {
      const uint16_t* i = f.index + 4 * j;
      const auto& g = quant::kIq2SGrid;
      return {grid8(g[i[0]], g[i[1]], g[i[2]], g[i[3]]), sign_bytes(w + 34 + 4 * j),
              two_scales(f.pairs, j)};
    } else if constexpr (kType == DType::IQ3_S) {
      const int scale = 2 * (w[106 + j / 2] >> (4 * (j % 2)) & 15) + 1;
      return {grid4(quant::kIq3SGrid, f.index + 8 * j), sign_bytes(w + 74 + 4 * j), _mm256_set1_epi16(int16_t(scale))};
    } else if constexpr (kType == DType::IQ1_S || kType == DType::IQ1_M) {
      // 8 g +- 1 for grid values g in -1..1: vpsignb of 8 by g, then the deltas.
      const __m256i grid = iq1_grid(f.index, j);
      __m256i deltas, scales;
      if constexpr (kType == DType::IQ1_S) {
        const int h = w[34 + 2 * j] | w[35 + 2 * j] << 8;
        deltas = _mm256_set1_epi8(h & 0x8000 ? -1 : 1);
        scales = _mm256_set1_epi16(int16_t(2 * (h >> 12 & 7) + 1));
      } else {
        // Word j holds a nibble per 8 values: 3 index bits, then the delta's sign (bits 3, 7 of its
        // low byte for values 0..15, of its high byte for 16..31).
        int16_t qh;
        std::memcpy(&qh, w + 32 + 2 * j, 2);
        const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi16(qh), _mm256_setr_epi64x(0, 0, 0x0101010101010101, 0x0101010101010101));
        const __m256i bit = _mm256_setr_epi64x(0x0808080808080808, int64_t(0x8080808080808080), 0x0808080808080808, int64_t(0x8080808080808080));
        deltas = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(1));
        scales = two_scales(f.pairs, j);
      }
      return signed_part(_mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), grid), deltas), scales);
    } else {  // the ternary types: q = u - 1
      return signed_part(_mm256_sub_epi8(load32(f.digits + 32 * j), _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
    }
  }
  // Bytes times 3 and times a factor per 16-bit lane (the same for both bytes), modulo 256.
  template <class V>
  static V times3(V v) {
    if constexpr (sizeof(V) == 32) return _mm256_add_epi8(v, _mm256_add_epi8(v, v));
    else return _mm_add_epi8(v, _mm_add_epi8(v, v));
  }
  static __m128i multiply_bytes(__m128i v, __m128i factors) {
    const __m128i high = _mm_mullo_epi16(_mm_and_si128(v, _mm_set1_epi16(int16_t(0xff00))), factors);
    return _mm_blendv_epi8(_mm_mullo_epi16(v, factors), high, _mm_set1_epi16(int16_t(0xff00)));
  }
  // A ternary super-block's 8 sub-blocks as digits u = q + 1 (0..2; TQ2_0's 2-bit fields can hold 3).
  // TQ1_0 packs 5 base-3 digits per byte, the first one most significant: digit n of byte b is
  // (b 3^n mod 256) 3 / 256, 0 up to 85, 1 up to 170, 2 above; the multiples by 3^n each from the
  // one before. Sub-blocks 0..4 are digit j of bytes 0..31, 5 and 6 digits 0,1 / 2,3 of bytes 32..47
  // (a half each), 7 digit 4 of bytes 32..47 and digit n of bytes 48..51 at values 240 + 4 n.
  template <DType kType>
  static void ternary_digits(const uint8_t* w, __m256i (&u)[8]) {
    if constexpr (kType == DType::TQ2_0) {
      for (int j = 0; j < 8; ++j) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * (j / 4)));
        u[j] = _mm256_and_si256(_mm256_srli_epi16(bytes, 2 * (j % 4)), _mm256_set1_epi8(3));
      }
    } else {
      static_assert(kType == DType::TQ1_0);
      u[0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      for (int j = 1; j < 5; ++j) u[j] = times3(u[j - 1]);
      __m128i tail[5];
      tail[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 32));
      for (int n = 1; n < 5; ++n) tail[n] = times3(tail[n - 1]);
      int32_t qh;
      std::memcpy(&qh, w + 48, 4);
      u[5] = _mm256_set_m128i(tail[1], tail[0]);
      u[6] = _mm256_set_m128i(tail[3], tail[2]);
      u[7] = _mm256_set_m128i(multiply_bytes(_mm_set1_epi32(qh), _mm_setr_epi16(1, 1, 3, 3, 9, 9, 27, 27)), tail[4]);
      for (int j = 0; j < 8; ++j) {
        const __m256i flipped = _mm256_xor_si256(u[j], _mm256_set1_epi8(char(0x80)));  // unsigned order, signed compares
        const __m256i above85 = _mm256_cmpgt_epi8(flipped, _mm256_set1_epi8(char(85 ^ 0x80)));
        const __m256i above170 = _mm256_cmpgt_epi8(flipped, _mm256_set1_epi8(char(170 ^ 0x80)));
        u[j] = _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(above85, above170));
      }
    }
  }
  // sums[t] = sum_j scale[j] sum_i q_i a_i over the super-block (at w), token t's 8 activation
  // blocks at x + t * blocks and their sums (int16) at block_sums + t * blocks: the exact integer.
  // The ternary types multiply their digits u = q + 1 (unsigned) by a directly and subtract the
  // blocks' sums (8 sub-blocks' pairs, at most 8 * 2 * 3 * 127, stay in 16 bits); IQ1_S's
  // 8 g + delta (one delta per 32 values) as 8 g, then the deltas' factors times the blocks' sums
  // (at most 15 * 4064 each).
  template <DType kType, int T>
  static void codebook_sums(const uint8_t* w, const ActivationBlock* x, const int16_t* block_sums, int64_t blocks,
                            int32_t* sums) {
    const auto sums8 = [&](int t) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(block_sums + t * blocks)); };
    __m256i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_si256();
    if constexpr (kType == DType::TQ1_0 || kType == DType::TQ2_0) {
      __m256i u[8];
      ternary_digits<kType>(w, u);
      for (int j = 0; j < 8; ++j)
        for (int t = 0; t < T; ++t) acc[t] = _mm256_add_epi16(acc[t], _mm256_maddubs_epi16(u[j], load32(x[t * blocks + j].q)));
      for (int t = 0; t < T; ++t)
        acc[t] = _mm256_sub_epi32(_mm256_madd_epi16(acc[t], _mm256_set1_epi16(1)), _mm256_cvtepi16_epi32(sums8(t)));
    } else if constexpr (kType == DType::IQ1_S) {
      CodebookFields f;
      codebook_fields<kType>(w, f);
      for (int j = 0; j < 8; ++j) {
        const __m256i grid = iq1_grid(f.index, j);
        const __m256i magnitudes = _mm256_abs_epi8(grid), scales = one_scale(f, j);
        for (int t = 0; t < T; ++t) {
          const __m256i products = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(load32(x[t * blocks + j].q), grid));
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(products, scales));
        }
      }
      const __m128i deltas = _mm_loadu_si128(reinterpret_cast<const __m128i*>(f.signed_factor));
      for (int t = 0; t < T; ++t) acc[t] = _mm256_add_epi32(acc[t], _mm256_zextsi128_si256(_mm_madd_epi16(sums8(t), deltas)));
    } else {
      CodebookFields f;
      codebook_fields<kType>(w, f);
      for (int j = 0; j < 8; ++j) {
        const CodebookPart p = codebook_part<kType>(w, j, f);
        for (int t = 0; t < T; ++t) {
          const __m256i a = _mm256_sign_epi8(load32(x[t * blocks + j].q), p.signs);
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(p.magnitudes, a), p.scales));
        }
      }
    }
    for (int t = 0; t < T; ++t) sums[t] = sum_lanes(acc[t]);
  }

  // Q2_K / Q3_K: per activation block (half h of the super-block, quarter k), its 32 q from the 2-bit
  // fields at bits 2k of qs's 32 bytes of half h (and Q3_K's top bit 4h + k of hmask), sub-blocks
  // 2m and 2m + 1 in the low and high 128 bits; vpmaddubsw's pairs (q <= 7: no saturation) times
  // each half's factor by vpmaddwd. The min term: the 16 half sums times the 16 factors by one
  // vpmaddwd. Q3_K's q - 4 in one sum: sum scale (q a) - 4 scale a.
  // A Q3_K super-block's 16 factors sc[j] - 32 as int8 (quant::q3_k_scales in registers: a store
  // of its words then a vector load would wait on store forwarding). The 12 bytes are read as
  // bytes 94..109 of the block moved down by 2, so nothing past the block's 110 bytes is read.
  static __m128i q3_k_factors(const uint8_t* w) {
    const __m128i packed = _mm_srli_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 94)), 2);
    const __m128i low4 = _mm_set1_epi8(15);
    // Low 4 bits: bytes 0..7's low nibbles (j < 8), then their high nibbles (j >= 8).
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(packed, low4), _mm_and_si128(_mm_srli_epi16(packed, 4), low4));
    // Top 2 bits: word 2 (bytes 8..11) shifted by 2 (j / 4) for word j / 4 of the result.
    const __m128i top = _mm_and_si128(_mm_srlv_epi32(_mm_shuffle_epi32(packed, 0xaa), _mm_setr_epi32(0, 2, 4, 6)),
                                      _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi32(top, 4)), _mm_set1_epi8(32));
  }
  template <int T, DType kType>
  static void low_bit_k_sums(const uint8_t* w, const ActivationBlock* x, const int16_t* half_sums, int64_t blocks,
                             int32_t* dots, int32_t* mins) {
    constexpr bool kThreeBits = kType == DType::Q3_K;
    alignas(32) int16_t scale[16], min[16];
    if constexpr (kThreeBits) {
      const __m256i factors = _mm256_cvtepi8_epi16(q3_k_factors(w));
      _mm256_store_si256(reinterpret_cast<__m256i*>(scale), factors);
      _mm256_store_si256(reinterpret_cast<__m256i*>(min), _mm256_slli_epi16(factors, 2));
    } else {
      const __m256i packed = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(scale), _mm256_and_si256(packed, _mm256_set1_epi16(15)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(min), _mm256_srli_epi16(packed, 4));
    }
    const __m256i ones = _mm256_set1_epi8(1), low2 = _mm256_set1_epi8(3);
    const __m256i min_factors = _mm256_load_si256(reinterpret_cast<const __m256i*>(min));
    const __m256i hmask = kThreeBits ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)) : _mm256_setzero_si256();
    const uint8_t* qs = w + (kThreeBits ? 32 : 16);
    __m256i dot_acc[T], min_acc[T];
    for (int t = 0; t < T; ++t) {
      dot_acc[t] = _mm256_setzero_si256();
      min_acc[t] = _mm256_madd_epi16(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half_sums + 2 * t * blocks)), min_factors);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i fields = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * h));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const int m = 4 * h + k;  // the activation block
        __m256i q = _mm256_and_si256(_mm256_srli_epi16(fields, 2 * k), low2);
        if constexpr (kThreeBits)
          q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hmask, m), ones), 2));
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(scale[2 * m + 1]), _mm_set1_epi16(scale[2 * m]));
        for (int t = 0; t < T; ++t) {
          const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t * blocks + m].q));
          dot_acc[t] = _mm256_add_epi32(dot_acc[t], _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), s));
        }
      }
    }
    for (int t = 0; t < T; ++t) {
      if constexpr (kThreeBits) {
        dots[t] = sum_lanes(_mm256_sub_epi32(dot_acc[t], min_acc[t]));
        mins[t] = 0;
      } else {
        dots[t] = sum_lanes(dot_acc[t]);
        mins[t] = sum_lanes(min_acc[t]);
      }
    }
  }

  template <int T>
  static void q6_k_sums(const uint8_t* w, const ActivationBlock* x, int64_t blocks, int32_t* sums) {
    alignas(32) int16_t scales[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(scales),
                       _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 192))));
    // Words 0, 1 of a broadcast pair of scales to the low 8 words, words 2, 3 to the high 8.
    const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  //
                                            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    const __m256i offset = _mm256_set1_epi8(32);
    __m256i acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i ql[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * h)),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * h + 32))};
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 128 + 32 * h));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m256i q = q6_k_quarter(ql[k % 2], qh, k);
        int32_t pair;
        std::memcpy(&pair, scales + 8 * h + 2 * k, 4);
        const __m256i scale = _mm256_shuffle_epi8(_mm256_set1_epi32(pair), spread);
        for (int t = 0; t < T; ++t) {
          const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[t * blocks + 4 * h + k].q));
          const __m256i products = _mm256_sub_epi16(_mm256_maddubs_epi16(q, a), _mm256_maddubs_epi16(offset, a));
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(products, scale));
        }
      }
    }
    for (int t = 0; t < T; ++t) sums[t] = sum_lanes(acc[t]);
  }

  // Interleaved groups of 8 rows (util/quant.hpp): a 32-byte load holds 8 bytes of 4 rows, each
  // multiplied by the same 8 activation bytes broadcast to every quarter; the products of rows
  // 0, 1, 4, 5 and of rows 2, 3, 6, 7 leave two 32-bit lanes per row, and one vphaddd of the
  // two vectors gives rows 0..7 in order, so a vector of 8 floats accumulates 8 rows.
  static __m256i bytes8(const int8_t* p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
  }
  static constexpr int x8_tokens = 4;  // tokens per interleaved tile
  // A group's bytes per block index: Q8_0's, or Q4_0's / Q5_0's / Q4_1's / Q5_1's / IQ4_NL's / MXFP4's (util/quant.hpp),
  // whose tiles are Q8_0's.
  template <DType D>
  static constexpr size_t small_group_bytes = 8 * quant::small_block_bytes(D);
  // Half h (rows 0, 1, 4, 5 | 2, 3, 6, 7) of Q8_0's chunk k of a group's block as int8 values: Q8_0's
  // bytes, or Q4_0's chunk k % 2 of nibbles (low for k < 2, high after) less 8 (IQ4_NL's, MXFP4's: looked up); Q5_0's with the
  // top bit of word k (one byte per row: each spread over its row's 8 bytes) as 16, less 16; Q4_1's
  // and Q5_1's q as they are.
  // Half h of Q8_0's chunk k of a group's 2 chunks of nibbles at q (Q4_0's, IQ4_NL's, MXFP4's): the low nibbles for k < 2.
  static __m256i chunk_nibbles(const uint8_t* q, int k, int h) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * (k % 2) + 32 * h));
    return _mm256_and_si256(k < 2 ? raw : _mm256_srli_epi16(raw, 4), _mm256_set1_epi8(15));
  }
  template <DType D>
  static __m256i small_group_values(const uint8_t* g, int k, int h) {
    if constexpr (D == DType::Q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 16 + 64 * k + 32 * h));
    const __m256i nibbles = chunk_nibbles(g + quant::small_group_nibbles(D), k, h);
    if constexpr (D == DType::Q4_0) return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
    if constexpr (D == DType::IQ4_NL) return _mm256_shuffle_epi8(iq4_nl_values(), nibbles);
    if constexpr (D == DType::MXFP4) return _mm256_shuffle_epi8(mxfp4_values(), nibbles);
    if constexpr (D == DType::Q4_1) return nibbles;
    int64_t word;
    std::memcpy(&word, g + quant::small_group_high_bits(D) + 8 * k, 8);
    const int64_t slot = 0x0101010101010101 * (4 * h);  // the half's slots 4h .. 4h + 3
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi64x(word), _mm256_setr_epi64x(slot, slot + 0x0101010101010101, slot + 0x0202020202020202,
                                                     slot + 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(16));
    if constexpr (D == DType::Q5_1) return _mm256_or_si256(nibbles, high);
    return _mm256_sub_epi8(_mm256_or_si256(nibbles, high), _mm256_set1_epi8(16));
  }
  // A group's float steps of its 8 rows (in row order): their fp16 d, or MXFP4's 2^(e - 128)
  // (quant::mxfp4_step on 8 lanes: e - 1 in the exponent field, the denormals 2^-128 and 2^-127
  // for e = 0 and 1).
  template <DType D>
  static __m256 small_group_steps(const uint8_t* g) {
    if constexpr (D == DType::MXFP4) {
      const __m256i e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g)));
      const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
      const __m256i denormal = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
      return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, denormal, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e)));
    } else {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
    }
  }
  // An interleaved IQ4_XS group's steps float(d * (ls[j] - 32)) of its 8 rows (in row order), per
  // sub-block j: ls[j] from bits 4j.. of each row's scales_l and 2j.. of its scales_h.
  static void iq4_xs_steps(const uint8_t* g, __m256* steps) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
    const __m256i high =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + quant::kIq4XsHighScales)));
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + quant::kIq4XsLowScales));
    for (int j = 0; j < 8; ++j) {
      const __m256i ls =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(low, 4 * j), _mm256_set1_epi32(15)),
                          _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(high, 2 * j), _mm256_set1_epi32(3)), 4));
      steps[j] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(ls, _mm256_set1_epi32(32))));
    }
  }
  // IQ4_XS: per sub-block j, the 8 rows' IQ4_NL chunks against activation block 8 s + j and their
  // steps (iq4_xs_steps), as QuantLaneAvx512Vnni::iq4_xs_x8.
  template <int T>
  static void iq4_xs_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    constexpr size_t kBytes = 8 * 136;
    for (int64_t b = 0; b < blocks; b += 8, g += kBytes) {
      if constexpr (T == 1)
        for (size_t line = 0; line < kBytes; line += 64) __builtin_prefetch(g + 2 * kBytes + line);
      __m256 steps[8];
      iq4_xs_steps(g, steps);
      for (int j = 0; j < 8; ++j) {
        const __m256 step = steps[j];
        const uint8_t* q = g + quant::kIq4XsNibbles + 128 * j;
        __m256i sums[T][2];
        for (int t = 0; t < T; ++t) sums[t][0] = sums[t][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k)
          for (int h = 0; h < 2; ++h) {
            const __m256i w = _mm256_shuffle_epi8(iq4_nl_values(), chunk_nibbles(q, k, h));
            const __m256i w_abs = _mm256_sign_epi8(w, w);
            for (int t = 0; t < T; ++t) {
              const __m256i a = bytes8(x[t * blocks + b + j].q + 8 * k);
              sums[t][h] = _mm256_add_epi32(sums[t][h], _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w)), ones));
            }
          }
        for (int t = 0; t < T; ++t) {
          const ActivationBlock& a = x[t * blocks + b + j];
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(sums[t][0], sums[t][1])),
                                   _mm256_mul_ps(step, _mm256_broadcast_ss(&a.d)), acc[t]);
        }
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }
  // Q4_1's / Q5_1's second step per block, small_block_tile's: acc + float(a.sum) * (m * a.d) for
  // the 8 rows' fp16 m at `m`.
  static __m256 min_step(const uint8_t* m, const ActivationBlock& a, __m256 acc) {
    const __m256 ma = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(m))), _mm256_set1_ps(a.d));
    return _mm256_fmadd_ps(_mm256_set1_ps(float(a.sum)), ma, acc);
  }
  template <int T, DType D = DType::Q8_0>
  static void q8_0_x8(const uint8_t* g, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    constexpr size_t kBytes = small_group_bytes<D>;
    for (int64_t b = 0; b < blocks; ++b, g += kBytes) {
      // One token reads each group once from memory: every line of the block 8 blocks ahead is
      // asked for (a group's blocks lie back to back; one line in four was not enough).
      if constexpr (T == 1)
        for (size_t line = 0; line < kBytes; line += 64) __builtin_prefetch(g + 8 * kBytes + line);
      const __m256 d = small_group_steps<D>(g);
      __m256i sums[T][2];
      for (int t = 0; t < T; ++t) sums[t][0] = sums[t][1] = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k)
        for (int h = 0; h < 2; ++h) {
          // |w| times a with w's sign, as madd_q8 (no saturation: |w| <= 128, |a| <= 127).
          const __m256i w = small_group_values<D>(g, k, h);
          const __m256i w_abs = _mm256_sign_epi8(w, w);
          for (int t = 0; t < T; ++t) {
            const __m256i a = bytes8(x[t * blocks + b].q + 8 * k);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(a, w)), ones);
            sums[t][h] = _mm256_add_epi32(sums[t][h], p);
          }
        }
      for (int t = 0; t < T; ++t) {
        const ActivationBlock& a = x[t * blocks + b];
        const __m256 da = _mm256_mul_ps(d, _mm256_broadcast_ss(&a.d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(sums[t][0], sums[t][1])), da, acc[t]);
        if constexpr (quant::has_block_min(D)) acc[t] = min_step(g + 16, a, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }
  // Q4_K: the 96 bytes of scales and mins unpack as 4 vectors of 8 units' words (the word trick
  // of quant::q4_k_scales_mins, on 8 units at once); sub-block j's scales of rows 0, 1, 4, 5 are
  // the bytes of scales[0][j] (rows 2, 3, 6, 7: scales[1][j]), each spread to the four 16-bit
  // lanes of its row's products. A 16-bit lane adds 4 pairs of nibble products: at most
  // 4 * 2 * 15 * 127 = 15240; times a 6-bit scale and summed over a super-block, a row's 32-bit
  // lanes stay below 2^25.
  struct Q4kHead {
    __m256 d, dmin;
    alignas(32) uint32_t scales[2][8];  // [rows 0, 1, 4, 5 | rows 2, 3, 6, 7][sub-block]
    __m256i mins[4];  // per pair q of sub-blocks, rows 0..7's (m[2q], m[2q + 1]) as 16-bit pairs
  };
  static void q4_k_head(const uint8_t* g, Q4kHead& h) {
    const __m256i low6 = _mm256_set1_epi8(63), low4 = _mm256_set1_epi8(15), low2 = _mm256_set1_epi8(3);
    h.d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
    h.dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16)));
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 32));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 64));
    const __m256i w2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 96));
    _mm256_store_si256(reinterpret_cast<__m256i*>(h.scales[0]), _mm256_and_si256(w0, low6));
    _mm256_store_si256(reinterpret_cast<__m256i*>(h.scales[1]),
                       _mm256_or_si256(_mm256_and_si256(w2, low4),
                                       _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w0, 6), low2), 4)));
    const __m256i mins_lo = _mm256_and_si256(w1, low6);
    const __m256i mins_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), low4),
                                            _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w1, 6), low2), 4));
    const __m256i pairs02 = _mm256_unpacklo_epi32(mins_lo, mins_hi), pairs13 = _mm256_unpackhi_epi32(mins_lo, mins_hi);
    h.mins[0] = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(pairs02));
    h.mins[1] = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(pairs13));
    h.mins[2] = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(pairs02, 1));
    h.mins[3] = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(pairs13, 1));
  }
  // Sub-block j's scales of half h (rows 0, 1, 4, 5 or 2, 3, 6, 7) in their rows' 16-bit lanes.
  static __m256i q4_k_scale(const Q4kHead& head, int h, int j) {
    const __m256i spread = _mm256_setr_epi8(0, -1, 0, -1, 0, -1, 0, -1, 1, -1, 1, -1, 1, -1, 1, -1,  //
                                            2, -1, 2, -1, 2, -1, 2, -1, 3, -1, 3, -1, 3, -1, 3, -1);
    return _mm256_shuffle_epi8(_mm256_set1_epi32(int(head.scales[h][j])), spread);
  }
  // The super-block's float step for one token: its integer sums (dots of rows 0, 1, 4, 5 and
  // 2, 3, 6, 7) and its min terms against the token's 8 block sums s.
  static __m256 q4_k_finish(const Q4kHead& head, __m256i dots0, __m256i dots1, const int16_t* s, const float* ad_p,
                            __m256 acc) {
    __m256i min_sum = _mm256_setzero_si256();
    for (int q = 0; q < 4; ++q) {
      int32_t pair;
      std::memcpy(&pair, s + 2 * q, 4);
      min_sum = _mm256_add_epi32(min_sum, _mm256_madd_epi16(head.mins[q], _mm256_set1_epi32(pair)));
    }
    const __m256 ad = _mm256_broadcast_ss(ad_p);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(dots0, dots1)), _mm256_mul_ps(head.d, ad), acc);
    return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(min_sum), _mm256_mul_ps(head.dmin, ad), acc);
  }
  // Q5_K's interleaved groups (util/quant.hpp) are Q4_K's with a fifth span of qh, whose chunk
  // k holds the top bits of the nibbles' chunk k at the same byte: sub-block j's bit j moved to
  // bit 4 and added to the nibble (q <= 31). A pair of vpmaddubsw products is then at most
  // 2 * 31 * 127 = 7874 and four chunks' add to 31496: still exact in 16 bits.
  template <DType D>
  static constexpr size_t group_bytes = D == DType::Q5_K ? 8 * 176 : 8 * 144;
  static __m256i with_high_bit(__m256i nibbles, const uint8_t* qh, int j) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
    const __m256i moved = j <= 4 ? _mm256_slli_epi16(bits, 4 - j) : _mm256_srli_epi16(bits, j - 4);
    return _mm256_or_si256(nibbles, _mm256_and_si256(moved, _mm256_set1_epi8(16)));
  }
  template <int T, DType D = DType::Q4_K>
  static void q4_k_x8(const uint8_t* g, const ActivationBlock* x, const int16_t* sums, int64_t blocks, float* y,
                      int64_t ldy) {
    if constexpr (T == 1) {
      q4_k_x8_one<D>(g, x, sums, blocks, y);
      return;
    }
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < blocks; b += 8, g += group_bytes<D>) {
      Q4kHead head;
      q4_k_head(g, head);
      __m256i dots[T][2];
      for (int t = 0; t < T; ++t) dots[t][0] = dots[t][1] = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        const uint8_t* q = g + 128 + 256 * (j / 2);
        for (int h = 0; h < 2; ++h) {
          __m256i products[T];
          for (int t = 0; t < T; ++t) products[t] = _mm256_setzero_si256();
          for (int k = 0; k < 4; ++k) {
            const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * k + 32 * h));
            __m256i nibbles = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(raw, 4) : raw, low4);
            if constexpr (D == DType::Q5_K) nibbles = with_high_bit(nibbles, g + quant::kQ5_KHighBits + 64 * k + 32 * h, j);
            for (int t = 0; t < T; ++t)
              products[t] = _mm256_add_epi16(products[t],
                                             _mm256_maddubs_epi16(nibbles, bytes8(x[t * blocks + b + j].q + 8 * k)));
          }
          const __m256i scale = q4_k_scale(head, h, j);
          for (int t = 0; t < T; ++t) dots[t][h] = _mm256_add_epi32(dots[t][h], _mm256_madd_epi16(products[t], scale));
        }
      }
      for (int t = 0; t < T; ++t)
        acc[t] = q4_k_finish(head, dots[t][0], dots[t][1], sums + t * blocks + b, &x[t * blocks + b].d, acc[t]);
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }
  // Q6_K (util/quant.hpp): a 32-byte load of a span holds 8 bytes of 4 rows (rows 0, 1, 4, 5 or
  // 2, 3, 6, 7), whose 6-bit q (0..63) vpmaddubsw multiplies by 8 broadcast activation bytes:
  // pairs of at most 2 * 63 * 127 = 16002, and a sub-block's two chunks added in 16 bits at most
  // 32004. The offsets (sub_block_offsets<32>) add -32 times the same pairs of activations, so each 16-bit
  // lane holds sum (q - 32) a over 4 values (|.| <= 16256), which vpmaddwd multiplies by the row's
  // signed scale and adds in pairs to 32 bits. The two halves' lanes end as Q8_0's do (vphaddd).
  // Offsets: per sub-block, 4 words -32 (a[2i] + a[2i + 1] + a[8 + 2i] + a[9 + 2i]), i < 4 (its two
  // chunks' activation pairs), sub-block 2b's then 2b + 1's for block b.
  // Q3_K (interleaved as Q6_K, util/quant.hpp) runs the same tiles on its 3-bit q (0..7) with
  // offsets of -4 times the pairs: each 16-bit lane then holds sum (q - 4) a over 4 values.
  static constexpr int q6_k_tokens = 4;  // tokens per tile: 8 integer sums of 16 registers
  template <int kBias>
  static void sub_block_offsets(const ActivationBlock* x, int64_t n, int32_t* out) {
    const __m256i offset = _mm256_set1_epi8(kBias);
    for (int64_t b = 0; b < n; ++b) {
      const __m256i pairs = _mm256_maddubs_epi16(offset, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q)));
      // Words 0..3 + 4..7 (sub-block 2b) in the low half's first 64 bits, 8..11 + 12..15 in the high half's.
      const __m256i sub = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_add_epi16(pairs, _mm256_srli_si256(pairs, 8)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * b),
                       _mm256_castsi256_si128(_mm256_permute4x64_epi64(sub, 0x08)));
    }
  }
  // The 6-bit values of chunk k (bytes 8k .. 8k + 7 of 8 rows) of activation block 4u + m: span
  // 2u + m % 2 of ql (low nibbles for m < 2) and qh's span u shifted so that bits 2m, 2m + 1 land
  // at 4, 5. `at` is 32 * h for the rows of half h.
  static __m256i q6_k_values(const uint8_t* g, int u, int m, int k, int at) {
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 256 * (2 * u + m % 2) + 64 * k + at));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 1024 + 256 * u + 64 * k + at));
    const __m256i low = _mm256_and_si256(m < 2 ? ql : _mm256_srli_epi16(ql, 4), _mm256_set1_epi8(15));
    const __m256i high = m == 0 ? _mm256_slli_epi16(qh, 4) : m == 1 ? _mm256_slli_epi16(qh, 2)
                         : m == 2 ? qh : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(low, _mm256_and_si256(high, _mm256_set1_epi8(0x30)));
  }
  // Q3_K's 3-bit values of the same chunk: qs's span u shifted so that bits 2m, 2m + 1 land at 0,
  // 1, and hmask's bit 4u + m at 2.
  static __m256i q3_k_values(const uint8_t* g, int u, int m, int k, int at) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 256 * u + 64 * k + at));
    const __m256i hm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + quant::kQ3_KHighBits + 64 * k + at));
    const int bit = 4 * u + m;
    const __m256i high = bit <= 2 ? _mm256_slli_epi16(hm, 2 - bit) : _mm256_srli_epi16(hm, bit - 2);
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qs, 2 * m), _mm256_set1_epi8(3)),
                           _mm256_and_si256(high, _mm256_set1_epi8(4)));
  }
  // Q2_K's 2-bit values of the same chunk: qs's span u shifted so that bits 2m, 2m + 1 land at 0, 1.
  static __m256i q2_k_values(const uint8_t* g, int u, int m, int k, int at) {
    const __m256i qs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + 256 * u + 64 * k + at));
    return _mm256_and_si256(_mm256_srli_epi16(qs, 2 * m), _mm256_set1_epi8(3));
  }
  // The values Q6_K's tiles multiply: Q6_K's, Q3_K's or Q2_K's.
  template <DType D>
  static __m256i q6_k_tile_values(const uint8_t* g, int u, int m, int k, int at) {
    if constexpr (D == DType::Q2_K) return q2_k_values(g, u, m, k, at);
    else if constexpr (D == DType::Q3_K) return q3_k_values(g, u, m, k, at);
    else return q6_k_values(g, u, m, k, at);
  }
  // A Q2_K group's scales (the low nibbles of its scale bytes) in Q6_K's places: out + 8 j.
  static void q2_k_group_scales(const uint8_t* g, int8_t* out) {
    for (int i = 0; i < 128; i += 32)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + quant::kQ2_KScales + i)),
                                           _mm256_set1_epi8(15)));
  }
  // A Q2_K group's mins m[4q + i] (the high nibbles) of rows 0..3 (lo) and 4..7 (hi), 4 int16 per
  // row in row order, for vpmaddwd against 4 of the activations' half sums: each 128 bits of the
  // group's 32 bytes of sub-blocks 4q .. 4q + 3 (two sub-blocks' 8 slots) duplicated across the
  // vector, then a byte shuffle from each picks a row's slot.
  static void q2_k_group_mins(const uint8_t* g, int q, __m256i& lo, __m256i& hi) {
    const __m256i m = _mm256_and_si256(
        _mm256_srli_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + quant::kQ2_KScales + 32 * q)), 4),
        _mm256_set1_epi8(15));
    const __m256i first = _mm256_setr_epi8(0, 8, -1, -1, 1, 9, -1, -1, 4, 12, -1, -1, 5, 13, -1, -1,  //
                                           2, 10, -1, -1, 3, 11, -1, -1, 6, 14, -1, -1, 7, 15, -1, -1);
    const __m256i second = _mm256_setr_epi8(-1, -1, 0, 8, -1, -1, 1, 9, -1, -1, 4, 12, -1, -1, 5, 13,  //
                                            -1, -1, 2, 10, -1, -1, 3, 11, -1, -1, 6, 14, -1, -1, 7, 15);
    const __m256i bytes = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_permute4x64_epi64(m, 0x44), first),
                                          _mm256_shuffle_epi8(_mm256_permute4x64_epi64(m, 0xee), second));
    lo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(bytes));
    hi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(bytes, 1));
  }
  // The integer min terms sum_j m[j] * half_sums[j] of a Q2_K group's super-block (at g, activation
  // block sb) for T tokens: mins[t][0] rows 0..3, mins[t][1] rows 4..7, two 32-bit lanes a row.
  template <int T>
  static void q2_k_mins(const uint8_t* g, const int16_t* half_sums, int64_t blocks, int64_t sb, __m256i (*mins)[2]) {
    for (int t = 0; t < T; ++t) mins[t][0] = mins[t][1] = _mm256_setzero_si256();
    for (int q = 0; q < 4; ++q) {
      __m256i lo, hi;
      q2_k_group_mins(g, q, lo, hi);
      for (int t = 0; t < T; ++t) {
        int64_t four;
        std::memcpy(&four, half_sums + 2 * (t * blocks + sb) + 4 * q, 8);
        mins[t][0] = _mm256_add_epi32(mins[t][0], _mm256_madd_epi16(lo, _mm256_set1_epi64x(four)));
        mins[t][1] = _mm256_add_epi32(mins[t][1], _mm256_madd_epi16(hi, _mm256_set1_epi64x(four)));
      }
    }
  }
  // low_bit_k_tile's second float step for Q2_K on 8 rows: acc + float(mins) * -(dmin * a_d).
  static __m256 q2_k_min_step(const uint8_t* g, const __m256i* mins, const float* a_d, __m256 acc) {
    // vphaddd leaves rows 0, 1, 4, 5, 2, 3, 6, 7: back in order.
    const __m256i rows =
        _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(mins[0], mins[1]), _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
    const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + quant::kQ2_KMinSteps)));
    const __m256 dmin_a = _mm256_xor_ps(_mm256_mul_ps(dmin, _mm256_broadcast_ss(a_d)), _mm256_set1_ps(-0.0f));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(rows), dmin_a, acc);
  }
  // A Q3_K group's 16 scales of its 8 rows as a Q6_K group holds its own (util/quant.hpp): int8
  // sc - 32, sub-block j's rows in slot order at out + 8 j. The packed words (quant::q3_k_scales's
  // steps on all 8 rows at once) give, per 32-bit lane (a row), 4 consecutive scales; a byte
  // shuffle per 128 bits and a lane permute turn the 4 x 8 bytes into sub-block order.
  static void q3_k_group_scales(const uint8_t* g, int8_t* out) {
    const auto word = [&](int w) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(g + quant::kQ3_KScales + 32 * w)); };
    const __m256i w0 = word(0), w1 = word(1), w2 = word(2), low4 = _mm256_set1_epi8(15), low2 = _mm256_set1_epi8(3);
    const auto top = [&](int shift) { return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(w2, shift), low2), 4); };
    const __m256i scales[4] = {
        _mm256_or_si256(_mm256_and_si256(w0, low4), top(0)),
        _mm256_or_si256(_mm256_and_si256(w1, low4), top(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w0, 4), low4), top(4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w1, 4), low4), top(6))};
    const __m256i by_sub_block = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                                  0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i halves = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // each sub-block's slots 0..3, then 4..7
    for (int q = 0; q < 4; ++q)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * q),
                          _mm256_permutevar8x32_epi32(
                              _mm256_shuffle_epi8(_mm256_sub_epi8(scales[q], _mm256_set1_epi8(32)), by_sub_block), halves));
  }
  // Sub-block j's scales (int8, 8 rows in slot order at scales + 8 j) of half h's 4 rows, each
  // sign-extended to its row's four 16-bit lanes.
  static __m256i q6_k_scale(const int8_t* scales, int j, int h) {
    const __m128i words = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + 8 * j)));
    const __m256i spread = h == 0 ? _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,  //
                                                     4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7)
                                  : _mm256_setr_epi8(8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11,  //
                                                     12, 13, 12, 13, 12, 13, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15);
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(words), spread);
  }
  // D: Q6_K, or Q3_K (its values and unpacked scales in Q6_K's places, offsets of -4), or Q2_K
  // (likewise, no offsets: q unsigned, no bias; its min terms from half_sums in 32-bit lanes, two per
  // row, then dmin's float step).
  template <int T, DType D = DType::Q6_K>
  static void q6_k_x8(const uint8_t* g, const ActivationBlock* x, const int32_t* offsets, const int16_t* half_sums,
                      int64_t blocks, float* y, int64_t ldy) {
    constexpr int kGroup = D == DType::Q2_K ? 8 * 84 : D == DType::Q3_K ? 8 * 110 : 8 * 210;
    __m256 acc[T];
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < blocks; sb += 8, g += kGroup) {
      if constexpr (T == 1)
        for (int line = 0; line < kGroup; line += 64) __builtin_prefetch(g + 2 * kGroup + line);
      alignas(32) int8_t unpacked[128];
      const int8_t* scales = reinterpret_cast<const int8_t*>(g + quant::kQ6_KScales);
      if constexpr (D == DType::Q3_K) q3_k_group_scales(g, unpacked);
      if constexpr (D == DType::Q2_K) q2_k_group_scales(g, unpacked);
      if constexpr (D != DType::Q6_K) scales = unpacked;
      __m256i dots[T][2], mins[T][2];
      for (int t = 0; t < T; ++t) dots[t][0] = dots[t][1] = _mm256_setzero_si256();
      if constexpr (D == DType::Q2_K) q2_k_mins<T>(g, half_sums, blocks, sb, mins);
#pragma GCC unroll 8
      for (int b = 0; b < 8; ++b) {
        const int u = b / 4, m = b % 4;
#pragma GCC unroll 2
        for (int sub = 0; sub < 2; ++sub)
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const __m256i q0 = q6_k_tile_values<D>(g, u, m, 2 * sub, 32 * h);
            const __m256i q1 = q6_k_tile_values<D>(g, u, m, 2 * sub + 1, 32 * h);
            const __m256i scale = q6_k_scale(scales, 2 * b + sub, h);
            for (int t = 0; t < T; ++t) {
              const ActivationBlock& a = x[t * blocks + sb + b];
              __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(q0, bytes8(a.q + 16 * sub)),
                                           _mm256_maddubs_epi16(q1, bytes8(a.q + 16 * sub + 8)));
              if constexpr (D != DType::Q2_K) {
                int64_t off;
                std::memcpy(&off, offsets + 4 * (t * blocks + sb + b) + 2 * sub, 8);
                p = _mm256_add_epi16(p, _mm256_set1_epi64x(off));
              }
              dots[t][h] = _mm256_add_epi32(dots[t][h], _mm256_madd_epi16(p, scale));
            }
          }
      }
      constexpr int64_t kSteps = D == DType::Q2_K ? quant::kQ2_KSteps : D == DType::Q3_K ? quant::kQ3_KSteps : quant::kQ6_KSteps;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + kSteps)));
      for (int t = 0; t < T; ++t) {
        const __m256 da = _mm256_mul_ps(d, _mm256_broadcast_ss(&x[t * blocks + sb].d));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(dots[t][0], dots[t][1])), da, acc[t]);
        if constexpr (D == DType::Q2_K) acc[t] = q2_k_min_step(g, mins[t], &x[t * blocks + sb].d, acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(y + t * ldy, acc[t]);
  }

  // One token (decode): the same integer sums and float steps as q4_k_x8<1>, arranged for a
  // stream from memory: each 32-byte load of nibbles serves both sub-blocks of its pair (low and
  // high nibbles), each activation broadcast both halves of the rows, the pair loop is unrolled
  // so that the integer sums stay in registers, and the lines of the group two super-blocks
  // (2.25 KiB for Q4_K) ahead are asked for (four measured no better here).
  template <DType D>
  static void q4_k_x8_one(const uint8_t* g, const ActivationBlock* x, const int16_t* sums, int64_t blocks, float* y) {
    __m256 acc = _mm256_setzero_ps();
    const __m256i low4 = _mm256_set1_epi8(15);
    for (int64_t b = 0; b < blocks; b += 8, g += group_bytes<D>) {
      for (size_t line = 0; line < group_bytes<D>; line += 64) __builtin_prefetch(g + 2 * group_bytes<D> + line);
      Q4kHead head;
      q4_k_head(g, head);
      __m256i dots0 = _mm256_setzero_si256(), dots1 = _mm256_setzero_si256();
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const uint8_t* q = g + 128 + 256 * p;
        const int8_t* a_even = x[b + 2 * p].q;
        const int8_t* a_odd = x[b + 2 * p + 1].q;
        // [sub-block 2p | 2p + 1][rows 0, 1, 4, 5 | 2, 3, 6, 7]
        __m256i even0 = _mm256_setzero_si256(), even1 = even0, odd0 = even0, odd1 = even0;
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          const __m256i ae = bytes8(a_even + 8 * k), ao = bytes8(a_odd + 8 * k);
          const __m256i raw0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * k));
          const __m256i raw1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * k + 32));
          __m256i e0 = _mm256_and_si256(raw0, low4), e1 = _mm256_and_si256(raw1, low4);
          __m256i o0 = _mm256_and_si256(_mm256_srli_epi16(raw0, 4), low4);
          __m256i o1 = _mm256_and_si256(_mm256_srli_epi16(raw1, 4), low4);
          if constexpr (D == DType::Q5_K) {
            const uint8_t* qh = g + quant::kQ5_KHighBits + 64 * k;
            e0 = with_high_bit(e0, qh, 2 * p);
            e1 = with_high_bit(e1, qh + 32, 2 * p);
            o0 = with_high_bit(o0, qh, 2 * p + 1);
            o1 = with_high_bit(o1, qh + 32, 2 * p + 1);
          }
          even0 = _mm256_add_epi16(even0, _mm256_maddubs_epi16(e0, ae));
          even1 = _mm256_add_epi16(even1, _mm256_maddubs_epi16(e1, ae));
          odd0 = _mm256_add_epi16(odd0, _mm256_maddubs_epi16(o0, ao));
          odd1 = _mm256_add_epi16(odd1, _mm256_maddubs_epi16(o1, ao));
        }
        dots0 = _mm256_add_epi32(dots0, _mm256_add_epi32(_mm256_madd_epi16(even0, q4_k_scale(head, 0, 2 * p)),
                                                         _mm256_madd_epi16(odd0, q4_k_scale(head, 0, 2 * p + 1))));
        dots1 = _mm256_add_epi32(dots1, _mm256_add_epi32(_mm256_madd_epi16(even1, q4_k_scale(head, 1, 2 * p)),
                                                         _mm256_madd_epi16(odd1, q4_k_scale(head, 1, 2 * p + 1))));
      }
      acc = q4_k_finish(head, dots0, dots1, sums + b, &x[b].d, acc);
    }
    _mm256_storeu_ps(y, acc);
  }
};

}  // namespace
}  // namespace crossmoe::kernels
