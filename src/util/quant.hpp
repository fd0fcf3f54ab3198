#pragma once
// Block-quantized weight formats, byte for byte ggml's (llama.cpp's ggml-common.h), so that a GGUF
// tensor of these types is a plain copy of a crossmoe one. Multi-byte fields are little-endian;
// blocks are packed back to back with no padding, a row holding cols / block of them.
//
//   Q8_0, 34 bytes per 32 values:  fp16 d | int8 q[32]
//        value[i] = d * q[i]
//   Q4_0, 18 bytes per 32 values:  fp16 d | 16 bytes of 4-bit q
//        value[i] = d * (q[i] - 8)   (q in 0..15: byte i's low nibble for i < 16, byte i - 16's high one)
//   Q5_0, 22 bytes per 32 values:  fp16 d | 4 bytes qh (a little-endian word) | 16 bytes of low 4 bits
//        value[i] = d * (q[i] - 16)  (q in 0..31: Q4_0's nibble with bit i of qh on top)
//     Both are Q8_0 blocks with fewer bits: their products unpack a block to Q8_0's int8 values
//     (small_block_values) and take Q8_0's integer dot.
//   Q4_1, 20 bytes per 32 values:  fp16 d | fp16 m | 16 bytes of 4-bit q, as Q4_0's
//   Q5_1, 24 bytes per 32 values:  fp16 d | fp16 m | 4 bytes qh | 16 bytes of low 4 bits, as Q5_0's
//        value[i] = q[i] * d + m   (q in 0..15 / 0..31; the product rounded, then the sum, as ggml)
//     Their products take the integer dot of q (small_block_values, as stored) and, for m, the
//     activation block's sum: d * a.d * sum(q a) + m * a.d * sum(a).
//   IQ4_NL, 18 bytes per 32 values: fp16 d | 16 bytes of 4-bit indices q, as Q4_0's q
//        value[i] = d * kIq4NlValues[q[i]]   (a fixed table of 16 int8 values, non-linear)
//     A Q8_0 block with 16 possible values: its products look its int8 values up
//     (small_block_values) and take Q8_0's integer dot.
//   MXFP4, 17 bytes per 32 values: byte e | 16 bytes of 4-bit indices q, as Q4_0's q
//        value[i] = 2^(e - 128) * kMxfp4Values[q[i]]   (the OCP MX format's E8M0 scale and E2M1
//        values, ggml's doubled: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives, times 2)
//     Products as IQ4_NL's, with the float step 2^(e - 128) (mxfp4_step) in place of d.
//   IQ4_XS, 136 bytes per 256 values (8 sub-blocks j of 32): fp16 d | 16-bit word scales_h | 4 bytes
//        scales_l | 8 runs of 16 bytes of 4-bit indices, run j sub-block j's as an IQ4_NL block's
//        value[32 j + i] = float(d * (ls[j] - 32)) * kIq4NlValues[q[j][i]]      (ls in 0..63)
//     ls[j]'s low 4 bits are bits 4j..4j+3 of scales_l (a little-endian word), its top 2 bits
//     bits 2j, 2j + 1 of scales_h. Its products take each sub-block as an IQ4_NL block whose step
//     is float(d * (ls[j] - 32)) (iq4_xs_step), against activations with a step per 32 values.
//   Q4_K, 144 bytes per 256 values (8 sub-blocks j of 32): fp16 d | fp16 dmin | 12 bytes holding
//        the 6-bit scale sc[j] and min m[j] of each sub-block | 128 bytes of 4-bit q
//        value[32 j + i] = d * sc[j] * q[j][i] - dmin * m[j]        (q in 0..15)
//     The 12 bytes: for j < 4, byte j holds sc[j] and byte 4 + j holds m[j] in their low 6 bits;
//     for j >= 4, byte 4 + j holds the low 4 bits of sc[j] (low nibble) and of m[j] (high
//     nibble), whose top 2 bits are the top 2 bits of bytes j - 4 (sc) and j (m).
//     The 128 bytes: 32 bytes per pair of sub-blocks (2p, 2p + 1); byte i of the pair holds
//     q[2p][i] in its low nibble and q[2p + 1][i] in its high nibble.
//   Q5_K, 176 bytes per 256 values (8 sub-blocks j of 32): Q4_K's first 16 bytes (d, dmin, the 12
//        bytes of scales and mins) | 32 bytes qh | 128 bytes of low 4 bits, laid out as Q4_K's q
//        value[32 j + i] = d * sc[j] * q[j][i] - dmin * m[j]        (q in 0..31)
//     q[j][i]'s top bit is bit j of qh byte i.
//   Q6_K, 210 bytes per 256 values (16 sub-blocks j of 16): 128 bytes ql of low 4 bits | 64 bytes qh
//        of high 2 bits | int8 sc[16] | fp16 d
//        value[16 j + i] = d * sc[j] * (q[16 j + i] - 32)        (q in 0..63; float(d * sc[j]) first)
//     Each half h of 128 values has 64 bytes of ql (from 64 h) and 32 of qh (from 128 + 32 h), and
//     its value 32 k + l (quarter k, l < 32) takes the low (k < 2) or high (k >= 2) nibble of ql
//     byte l + 32 (k % 2) as its low 4 bits and bits 2k, 2k + 1 of qh byte l as its top 2.
//   Q2_K, 84 bytes per 256 values (16 sub-blocks j of 16): 16 bytes holding sc[j] (low nibble) and
//        m[j] (high nibble) | 64 bytes qs of 2-bit q | fp16 d | fp16 dmin
//        value[16 j + i] = float(d * sc[j]) * q - float(dmin * m[j])        (q in 0..3)
//   Q3_K, 110 bytes per 256 values (16 sub-blocks j of 16): 32 bytes hmask of top bits | 64 bytes
//        qs of low 2 bits | 12 bytes of 6-bit scales sc[j] | fp16 d
//        value[16 j + i] = float(d * (sc[j] - 32)) * (q - 4)             (q in 0..7)
//     Both keep value v's low 2 bits in qs byte 32 (v / 128) + v % 32 at bits 2 (v % 128 / 32) and
//     up (4 values a byte, 32 apart); Q3_K's top bit of v is bit v / 32 of hmask byte v % 32.
//     Q3_K's 12 bytes: sc[j]'s low 4 bits are byte j's low nibble (j < 8) or byte j - 8's high one
//     (j >= 8), its top 2 bits are bits 2 (j / 4) and 2 (j / 4) + 1 of byte 8 + j % 4.
//     Their products take a super-block as low_bit_k_values describes it (256 q and 16 integer
//     factors of each kind; the vector lanes unpack them in registers).
//
// The codebook types (ggml's i-quants below 4 bits) and the ternary types: 256-value super-blocks
// that crossmoe reads and multiplies but does not write (ggml's quantizers for them search the
// codebooks against an importance matrix; llama-quantize makes them). Every one is, as the products
// and the dequantization read it (codebook_block_values), 256 int8 values q, 16 integer factors
// scale[j] (one per 16 values) and one float factor D:
//        value[16 j + i] = float(D * scale[j]) * q[16 j + i]
// which gives ggml's floats bit for bit: its steps are D * scale rounded once (d * (0.5 + ls) *
// 0.25 is (d / 8) * (2 ls + 1) in every rounding, the factors being powers of two), and IQ1's
// values dl * (g +- 1/8) are (dl / 8) * (8 g +- 1) exactly.
//   IQ2_XXS, 66 bytes: fp16 d | 8 sub-blocks j of 32 values, 8 bytes each: 4 bytes of grid indices
//        (kIq2XxsGrid, 8 magnitudes each), then a word w: 4 runs of 7 sign bits (bits 7l.., the
//        eighth by even_signs) and ls = w >> 28:  q = +-grid, scale = 2 ls + 1, D = d / 8
//   IQ2_XS, 74 bytes: fp16 d | 32 16-bit words (9 bits of index into kIq2XsGrid, 7 sign bits) |
//        8 bytes of 4-bit ls (low nibble: values 0..15 of sub-block j, high: 16..31); D = d / 8
//   IQ2_S, 82 bytes: fp16 d | 32 bytes of index low bits | 32 sign bytes | 8 bytes qh (2 more index
//        bits per 8 values: bits 2l, 2l + 1 of qh[j]; kIq2SGrid) | 8 bytes of ls as IQ2_XS's; D = d / 8
//   IQ3_XXS, 98 bytes: fp16 d | 64 bytes of indices into kIq3XxsGrid (4 values each) | 8 words as
//        IQ2_XXS's (signs and ls): scale = 2 ls + 1, D = d / 4
//   IQ3_S, 110 bytes: fp16 d | 64 bytes of index low bits | 8 bytes qh (bit k of qh[j]: the ninth
//        bit of index k of sub-block j) | 32 sign bytes | 4 bytes: sub-block j's 4-bit s in byte
//        j / 2 (low nibble for even j): scale = 2 s + 1, D = d (kIq3SGrid)
//   IQ1_S, 50 bytes: fp16 d | 32 bytes of index low bits | 8 16-bit words h_j: 3 more bits per 8
//        values (bits 3l..), ls = bits 12..14, the sign of delta (bit 15) (kIq1SGrid, values -1, 0,
//        1):  q = 8 g + (bit 15 ? -1 : 1), scale = 2 ls + 1, D = d / 8
//   IQ1_M, 56 bytes: 32 bytes of index low bits | 16 bytes qh (per 8 values a nibble: 3 index bits
//        and the sign of delta) | 4 16-bit words: 3-bit s per 16 values, and in their top nibbles
//        the fp16 d:  q = 8 g +- 1, scale = 2 s + 1, D = d / 8
//   TQ1_0, 54 bytes: 48 bytes qs | 4 bytes qh | fp16 d: base-3 digits, 5 per qs byte and 4 per qh
//        byte (digit n of byte b: (uint8(b * 3^n) * 3) >> 8): q = digit - 1, scale = 1, D = d
//   TQ2_0, 66 bytes: 64 bytes qs (2 bits per value, Q2_K's order) | fp16 d: q = bits - 1, D = d
//   Their products quantize activations per super-block (as ggml's Q8_K) and take, per (row, token,
//   super-block), the exact sum_j scale[j] sum_i q a, then acc = fma(float(sum), D * a.d, acc).
//
// The quantizers here are this project's (not ggml's search for least squares); their error
// bounds, which the tests check:
//   Q8_0: d = max|x| / 127 rounded UP to fp16, q = round(x / d): |x - value| <= d / 2.
//   Q4_0 / Q5_0: the same with 7 / 15 steps each side (q - 8 in -7..7, q - 16 in -15..15).
//   IQ4_NL: d = -x_m / 127 for the block's value x_m of largest magnitude (so that x_m is the table's
//     -127), its magnitude rounded UP to fp16, q = the table value nearest x / d: |x - value| <= 14 |d|
//     (x / d lies in -127..127; the widest gap is 113..127, at the table's end).
//   MXFP4: ggml's rule (quantize_row_mxfp4_ref), so that its blocks are llama-quantize's byte for
//     byte: e = floor(log2f(max|x|)) - 2 + 127 (0 for a block of zeros or below 2^-125), so that
//     max|x| / step lies in 8..16, and q the table value nearest x / step (the first of two at
//     equal distance): |x - value| <= 4 step (the values past 12 steps take 12).
//   IQ4_XS: per sub-block j, s_j = -x_m / 127 as IQ4_NL's d; d = max|s_j| / 31 rounded UP to fp16,
//     ls[j] - 32 = s_j's sign times ceil(|s_j| / d) (in -31..31), and each q IQ4_NL's nearest to
//     x / step_j for step_j = float(d * (ls[j] - 32)): |x - value| <= 14 |step_j|, |step_j| < |s_j| + d.
//   Q4_1 / Q5_1: m = min(x) rounded DOWN to fp16, d = (max(x) - m) / 15 (/ 31) rounded UP to fp16,
//     q = round((x - m) / d): |x - value| <= d / 2 (and the float rounding of q * d + m).
//   Q4_K: each sub-block's grid [-dmin * m, d * sc * 15 - dmin * m] is made to cover its values
//     (mins and scales rounded up), so |x - value| <= d * sc / 2, and
//     d * sc < (max(x_j) - min(0, min(x_j)) + dmin) / 15 + d.
//   Q5_K: Q4_K's grid with 31 steps instead of 15: |x - value| <= d * sc / 2, and
//     d * sc < (max(x_j) - min(0, min(x_j)) + dmin) / 31 + d.
//   Q2_K: Q4_K's grid on sub-blocks of 16 with 3 steps and 4-bit scales and mins:
//     |x - value| <= d * sc / 2, and d * sc < (max(x_j) - min(0, min(x_j)) + dmin) / 3 + d.
//   Q3_K: step_j = max|x_j| / 3.5 over sub-block j's 16 values, d = max(step_j) / 31 rounded UP to
//     fp16, sc[j] - 32 = ceil(step_j / d) (<= 31), q - 4 = round(x / (d * (sc[j] - 32))) in -4..3:
//     |x - value| <= d * (sc[j] - 32) / 2 (x / step = 3.5 rounds to 4 and is clamped to 3: still
//     half a step), and d * (sc[j] - 32) < step_j + d.
//   Q6_K: step_j = max|x_j| / 31 over sub-block j's 16 values, d = max(step_j) / 127 rounded UP to
//     fp16, sc[j] = ceil(step_j / d) (<= 127), q - 32 = round(x / (d * sc[j])) (in -31..31):
//     |x - value| <= d * sc[j] / 2, and d * sc[j] < step_j + d.
//
// Rows interleaved 8 at a time (every block type): the kernels' layout, made when weights are loaded
// (kernels::interleave_rows8), after llama.cpp's repacked q4_K_8x8. A group of 8 rows keeps its
// bytes (8 rows' worth) but holds, for each block index b in turn, the 8 rows' b-th blocks mixed so
// that one 32-byte load holds 8 bytes of 4 rows and one pass over an activation block serves all 8:
//   Q8_0, 272 bytes: fp16 d of rows 0..7 | 4 chunks k of 64 bytes: bytes 8k..8k+7 of q of rows 0,
//        1, 4, 5, then of rows 2, 3, 6, 7 (a 32-bit sum per row pair of lanes, so one vphaddd of the
//        two halves lines the 8 rows up in order)
//   Q4_0, 144 bytes: fp16 d of rows 0..7 | 2 chunks k of 64 bytes: bytes 8k..8k+7 of qs of rows 0,
//        1, 4, 5, then of rows 2, 3, 6, 7. Values 0..15 of a block are the low nibbles of its 16
//        bytes and values 16..31 the high ones, so one chunk k gives Q8_0's chunks k (x & 15) - 8
//        and k + 2 (x >> 4) - 8, and the kernels take Q8_0's integer dot and float steps on them.
//   Q5_0, 176 bytes: fp16 d of rows 0..7 | 4 words k of 8 bytes: byte k of qh (the top bits of
//        values 8k..8k+7) of rows 0, 1, 4, 5, 2, 3, 6, 7 | Q4_0's 2 chunks of nibbles. Word k is the
//        top bits of Q8_0's chunk k, bit i of it the value at byte i of the chunk (a byte mask).
//   IQ4_NL, 144 bytes: Q4_0's group (its nibbles are indices into kIq4NlValues).
//   MXFP4, 136 bytes: byte e of rows 0..7 | Q4_0's 2 chunks of nibbles (indices into kMxfp4Values).
//   IQ4_XS, 1088 bytes: fp16 d of rows 0..7 | scales_h of rows 0..7 | scales_l of rows 0..7 (4 bytes
//        each) | per sub-block j, 128 bytes: Q4_0's 2 chunks of the 8 rows' runs j of nibbles.
//   Q4_1, 160 bytes, and Q5_1, 192 bytes: Q4_0's and Q5_0's groups with the fp16 m of rows 0..7
//        after the d's, everything after them 16 bytes further on (q as stored: no bias).
//   Q4_K, 1152 bytes: fp16 d of rows 0..7 | fp16 dmin of rows 0..7 | 96 bytes of scales and mins |
//        1024 bytes of nibbles: per pair p of sub-blocks, 256 bytes in Q8_0's 4 chunks of 64 (bytes
//        8k..8k+7 of the pair's 32 bytes of rows 0, 1, 4, 5, then of rows 2, 3, 6, 7)
//     The 96 bytes: 8 units u of 12 bytes in Q4_K's packing (q4_k_pack_scales_mins), stored word by
//     word (bytes 0..3 of units 0..7, then bytes 4..7, then 8..11), so that one vector pass unpacks
//     all 8. Unit u's 8 "scales" are sc[u] of rows 0, 1, 4, 5, 2, 3, 6, 7; its 8 "mins" are, for
//     q = u / 2 and the rows 4h .. 4h + 3 with h = u % 2, m[2q] and m[2q + 1] of each row in turn
//     (pairs ready for a 16-bit multiply-add against two activation blocks' sums).
//   Q6_K, 1680 bytes: 1024 bytes of ql | 512 bytes of qh | 128 bytes of scales | fp16 d of rows 0..7
//     ql and qh: the row's 192 bytes as 6 spans of 32 (ql's 4, then qh's 2), each span's 256 bytes
//        in Q8_0's 4 chunks of 64 (bytes 8k..8k+7 of the span of rows 0, 1, 4, 5, then of rows 2, 3,
//        6, 7). Span s < 4 of ql holds, for half h = s / 2 and quarter k = s % 2, the low 4 bits of
//        activation blocks 4h + k (low nibbles) and 4h + k + 2 (high nibbles); span 4 + h of qh
//        their top 2 bits (block 4h + m at bits 2m, 2m + 1): one 64-byte chunk of each holds
//        8 values of 8 rows, the bytes one vpdpbusd against 8 activation bytes reads.
//     The 128 bytes: per sub-block j, the int8 sc[j] of rows 0, 1, 4, 5, 2, 3, 6, 7 (the rows' order
//        in a chunk).
//   Q5_K, 1408 bytes: Q4_K's 1152 bytes (its d, dmin, scales and mins, and the 128 bytes of low 4
//        bits of each row in Q4_K's places) | 256 bytes of qh: the row's 32 bytes of qh as one more
//        span in Q8_0's 4 chunks of 64 (bytes 8k..8k+7 of rows 0, 1, 4, 5, then of rows 2, 3, 6, 7),
//        so the chunk that holds a pair's nibbles for 8 rows has its top bits at the same place.
//   Q3_K, 880 bytes: 512 bytes of qs: the row's 64 bytes as 2 spans of 32 (half h: values 128 h ..
//        128 h + 127), each span's 256 bytes in Q8_0's 4 chunks of 64 (bytes 8k..8k+7 of rows 0, 1, 4,
//        5, then of rows 2, 3, 6, 7) | 256 bytes of hmask, one more span | 96 bytes: the 12 packed
//        scale bytes of rows 0, 1, 4, 5, 2, 3, 6, 7, word by word (bytes 0..3 of the 8 rows, then
//        4..7, then 8..11), so that one vector pass unpacks all 8 rows' 16 scales | fp16 d of rows
//        0..7. Chunk k of span h holds, at bits 2j and 2j + 1, the low bits of 8 values of 8 rows in
//        activation block 4h + j, and chunk k of hmask their top bits (bit 4h + j): Q6_K's tiles.
//   Q2_K, 672 bytes: Q3_K's 512 bytes of qs | 128 bytes: per sub-block j, the scale byte (sc | m << 4)
//        of rows 0, 1, 4, 5, 2, 3, 6, 7 (Q6_K's order of its scales) | fp16 d of rows 0..7 | fp16
//        dmin of rows 0..7.
// Rows past the last whole group stay as they were.
#include <bit>
#include <cstdint>
#include <cstring>

#include "util/dtype.hpp"
#include "util/quant_grids.hpp"

namespace crossmoe::quant {

constexpr int64_t kQ8_0Block = 32, kQ4_0Block = 32, kQ5_0Block = 32, kQ4_KBlock = 256, kQ4_KSubBlock = 32, kQ5_KBlock = 256, kQ5_KSubBlock = 32,
                  kQ6_KBlock = 256, kQ6_KSubBlock = 16;
// Where an interleaved Q6_K group's scales and steps start, and an interleaved Q5_K group's qh.
constexpr int64_t kQ6_KScales = 1536, kQ6_KSteps = 1664, kQ5_KHighBits = 1152;
// Where an interleaved Q3_K group's hmask, packed scales and steps start, and a Q2_K group's scales,
// steps and min steps.
constexpr int64_t kQ3_KHighBits = 512, kQ3_KScales = 768, kQ3_KSteps = 864;
constexpr int64_t kQ2_KScales = 512, kQ2_KSteps = 640, kQ2_KMinSteps = 656;
// Where an interleaved IQ4_XS group's scales_h, scales_l and sub-blocks' nibbles start.
constexpr int64_t kIq4XsHighScales = 16, kIq4XsLowScales = 32, kIq4XsNibbles = 64;

// Quantizes n values (a multiple of the type's block) into dtype_row_bytes(type, n) bytes.
// Throws on a bad n, on values that are not finite, or on values too large for the fp16 scales.
void quantize_row(DType type, const float* x, int64_t n, void* out);
// The inverse: n values from dtype_row_bytes(type, n) bytes of any block type, the
// floats ggml's own dequantization gives.
void dequantize_row(DType type, const void* in, int64_t n, float* out);

// IQ4_NL's values, ggml's kvalues_iq4nl: value = d * kIq4NlValues[q].
inline constexpr int8_t kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// MXFP4's values, ggml's kvalues_mxfp4 (E2M1 times 2): value = mxfp4_step(e) * kMxfp4Values[q].
inline constexpr int8_t kMxfp4Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
// 2^(e - 128) as a float (ggml's GGML_E8M0_TO_FP32_HALF): e - 1 in the exponent field, and for
// e = 0 and 1 the denormals 2^-128 and 2^-127.
inline float mxfp4_step(uint8_t e) {
  return std::bit_cast<float>(e < 2 ? uint32_t(0x00200000) << e : uint32_t(e - 1) << 23);
}

// The legacy 32-value types with a min: value = q * d + m.
constexpr bool has_block_min(DType t) { return t == DType::Q4_1 || t == DType::Q5_1; }
// The legacy 32-value types whose q are nibbles (Q5_0, Q5_1: with a fifth bit in qh).
constexpr bool has_fifth_bit(DType t) { return t == DType::Q5_0 || t == DType::Q5_1; }
constexpr bool is_nibble_block(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::IQ4_NL || t == DType::MXFP4 || has_fifth_bit(t);
}
// Bytes of a 32-value block's scale: an fp16 d, or MXFP4's byte e.
constexpr int small_block_scale_bytes(DType t) { return t == DType::MXFP4 ? 1 : 2; }
// Bytes of one block of a 32-value type.
constexpr size_t small_block_bytes(DType t) {
  return t == DType::Q8_0 ? 34 : small_block_scale_bytes(t) + 16 + (has_block_min(t) ? 2 : 0) + (has_fifth_bit(t) ? 4 : 0);
}
// Where an interleaved Q4_0 / Q5_0 / Q4_1 / Q5_1 / IQ4_NL / MXFP4 group's top bits (Q5_0, Q5_1) and
// nibbles start (see above): after the 8 scales, and the 8 m's of Q4_1 / Q5_1.
constexpr int64_t small_group_high_bits(DType t) { return has_block_min(t) ? 32 : 8 * small_block_scale_bytes(t); }
constexpr int64_t small_group_nibbles(DType t) { return small_group_high_bits(t) + (has_fifth_bit(t) ? 32 : 0); }
// The block types whose matrices the kernels also read interleaved 8 rows at a time (below): all.
constexpr bool has_interleaved_layout(DType t) {
  return t == DType::Q8_0 || is_nibble_block(t) || t == DType::IQ4_XS || t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K ||
         t == DType::Q5_K || t == DType::Q6_K;
}

// A Q4_0, Q5_0, IQ4_NL or MXFP4 block's 32 values in units of its step (q - 8, q - 16,
// kIq4NlValues[q], kMxfp4Values[q]) as int8; a Q4_1 or Q5_1 block's q as stored (0..15, 0..31).
// (inline: the kernels call it per block; each ISA's file vectorises it with its own flags).
template <DType kType>
inline void small_block_values(const uint8_t* block, int8_t* q) {
  static_assert(is_nibble_block(kType));
  constexpr bool kFiveBits = has_fifth_bit(kType);
  constexpr int kHeader = small_block_scale_bytes(kType) + (has_block_min(kType) ? 2 : 0);  // d (or e), and m
  constexpr int kBias = has_block_min(kType) ? 0 : kFiveBits ? 16 : 8;
  const uint8_t* qs = block + kHeader + (kFiveBits ? 4 : 0);
  uint32_t qh = 0;
  if constexpr (kFiveBits) std::memcpy(&qh, block + kHeader, 4);  // little-endian, as the static_assert below requires
  for (int i = 0; i < 16; ++i) {
    if constexpr (kType == DType::IQ4_NL || kType == DType::MXFP4) {
      const int8_t* table = kType == DType::IQ4_NL ? kIq4NlValues : kMxfp4Values;
      q[i] = table[qs[i] & 15];
      q[i + 16] = table[qs[i] >> 4];
    } else {
      q[i] = int8_t(((qs[i] & 15) | ((qh >> i) & 1) << 4) - kBias);
      q[i + 16] = int8_t(((qs[i] >> 4) | ((qh >> (i + 16)) & 1) << 4) - kBias);
    }
  }
}
static_assert(std::endian::native == std::endian::little, "Q5_0's qh is read as a native word");

// Q3_K's 16 6-bit scales as stored (sc[j], 0..63: the factor is sc[j] - 32) from its 12 packed
// bytes, a word at a time (as ggml unpacks them).
inline void q3_k_scales(const uint8_t* packed, uint8_t* scales) {
  static_assert(std::endian::native == std::endian::little, "the words below are read little-endian");
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  constexpr uint32_t kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  const uint32_t sc[4] = {(w[0] & kLow4) | (w[2] & kLow2) << 4, (w[1] & kLow4) | ((w[2] >> 2) & kLow2) << 4,
                          ((w[0] >> 4) & kLow4) | ((w[2] >> 4) & kLow2) << 4,
                          ((w[1] >> 4) & kLow4) | ((w[2] >> 6) & kLow2) << 4};
  std::memcpy(scales, sc, 16);
}

// A Q2_K or Q3_K super-block as the products read it: q[v], its 256 values' q in value order
// (Q2_K 0..3, Q3_K 0..7), and per sub-block j the integer factors of its two sums in the
// super-block's product, scale[j] of sum_i q a and min[j] of sum_i a:
//   Q2_K: d * sum_j sc[j] sum_i q a - dmin * sum_j m[j] sum_i a          (scale = sc, min = m)
//   Q3_K: d * (sum_j (sc[j] - 32) sum_i q a - sum_j 4 (sc[j] - 32) sum_i a)
// (inline: the kernels call it per super-block; each ISA's file vectorises it with its own flags).
template <DType kType>
inline void low_bit_k_values(const uint8_t* block, uint8_t* q, int16_t* scale, int16_t* min) {
  static_assert(kType == DType::Q2_K || kType == DType::Q3_K);
  constexpr bool kThreeBits = kType == DType::Q3_K;
  const uint8_t* qs = block + (kThreeBits ? 32 : 16);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        uint8_t v = uint8_t((qs[32 * h + l] >> (2 * k)) & 3);
        if constexpr (kThreeBits) v |= uint8_t(((block[l] >> (4 * h + k)) & 1) << 2);
        q[128 * h + 32 * k + l] = v;
      }
  uint8_t stored[16];
  if constexpr (kThreeBits) q3_k_scales(block + 96, stored);
  for (int j = 0; j < 16; ++j) {
    if constexpr (kThreeBits) {
      scale[j] = int16_t(stored[j] - 32);
      min[j] = int16_t(4 * scale[j]);
    } else {
      scale[j] = int16_t(block[j] & 15);
      min[j] = int16_t(block[j] >> 4);
    }
  }
}

// Sub-block j's 6-bit scale and min from Q4_K's 12 packed bytes (inline: the kernels call it
// per super-block), and the inverse.
inline void q4_k_scale_min(const uint8_t* packed, int j, int* scale, int* min) {
  if (j < 4) {
    *scale = packed[j] & 63;
    *min = packed[j + 4] & 63;
  } else {
    *scale = (packed[j + 4] & 15) | ((packed[j - 4] >> 6) << 4);
    *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}
// All 8 scales and mins at once, a word at a time (the kernels' form of q4_k_scale_min, which the
// tests compare it with): scales[j] = sc[j], mins[j] = m[j].
inline void q4_k_scales_mins(const uint8_t* packed, uint8_t* scales, uint8_t* mins) {
  static_assert(std::endian::native == std::endian::little, "the words below are read little-endian");
  uint32_t w[3];
  std::memcpy(w, packed, 12);
  constexpr uint32_t kLow6 = 0x3f3f3f3f, kLow4 = 0x0f0f0f0f, kLow2 = 0x03030303;
  const uint32_t sc[2] = {w[0] & kLow6, (w[2] & kLow4) | (((w[0] >> 6) & kLow2) << 4)};
  const uint32_t m[2] = {w[1] & kLow6, ((w[2] >> 4) & kLow4) | (((w[1] >> 6) & kLow2) << 4)};
  std::memcpy(scales, sc, 8);
  std::memcpy(mins, m, 8);
}
void q4_k_pack_scales_mins(const int* scales, const int* mins, uint8_t* packed);

// One block index of a group of 8 rows of any block type: interleave8_block reads row r's block at
// rows + r * stride and writes the group's 8 * block bytes; deinterleave8_block is its inverse,
// writing row r's block at out + r * block bytes.
void interleave8_block(DType type, const void* rows, size_t stride, void* out);
void deinterleave8_block(DType type, const void* in, void* out);

// A little-endian fp16 field of a block (any alignment).
inline float read_half(const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// The float step of a block of a 32-value type: its fp16 d, or MXFP4's 2^(e - 128).
template <DType kType>
inline float small_block_step(const uint8_t* block) {
  if constexpr (kType == DType::MXFP4) return mxfp4_step(block[0]);
  else return read_half(block);
}

// The codebook and ternary types (see above).
constexpr bool is_codebook_block(DType t) {
  return t == DType::IQ2_XXS || t == DType::IQ2_XS || t == DType::IQ2_S || t == DType::IQ3_XXS || t == DType::IQ3_S ||
         t == DType::IQ1_S || t == DType::IQ1_M || t == DType::TQ1_0 || t == DType::TQ2_0;
}

// f.template operator()<kType>() for the codebook or ternary type t (is_codebook_block(t) must
// hold): the one switch from a run-time type to the templates that the dequantization and the
// kernels instantiate per type.
template <class F>
decltype(auto) with_codebook_type(DType t, F&& f) {
  switch (t) {
    case DType::IQ2_XXS: return f.template operator()<DType::IQ2_XXS>();
    case DType::IQ2_XS: return f.template operator()<DType::IQ2_XS>();
    case DType::IQ2_S: return f.template operator()<DType::IQ2_S>();
    case DType::IQ3_XXS: return f.template operator()<DType::IQ3_XXS>();
    case DType::IQ3_S: return f.template operator()<DType::IQ3_S>();
    case DType::IQ1_S: return f.template operator()<DType::IQ1_S>();
    case DType::IQ1_M: return f.template operator()<DType::IQ1_M>();
    case DType::TQ1_0: return f.template operator()<DType::TQ1_0>();
    default: return f.template operator()<DType::TQ2_0>();
  }
}

// A codebook or ternary super-block's float factor D (what codebook_block_values returns) is its
// fp16 d times a power of two: codebook_half_bits gives d's bits (IQ1_M assembles them from the top
// nibbles of its 4 scale words), codebook_factor_scale the power of two.
template <DType kType>
inline uint16_t codebook_half_bits(const uint8_t* block) {
  static_assert(is_codebook_block(kType));
  constexpr int kAt = kType == DType::TQ1_0 ? 52 : kType == DType::TQ2_0 ? 64 : 0;
  if constexpr (kType == DType::IQ1_M) {
    uint16_t sc[4];
    std::memcpy(sc, block + 48, 8);
    return uint16_t((sc[0] >> 12) | (sc[1] >> 8 & 0x00f0) | (sc[2] >> 4 & 0x0f00) | (sc[3] & 0xf000));
  } else {
    return uint16_t(block[kAt] | block[kAt + 1] << 8);
  }
}
template <DType kType>
constexpr float codebook_factor_scale() {
  return kType == DType::IQ3_S || kType == DType::TQ1_0 || kType == DType::TQ2_0 ? 1.0f
         : kType == DType::IQ3_XXS                                             ? 0.25f
                                                                               : 0.125f;
}
template <DType kType>
inline float codebook_factor(const uint8_t* block) {
  return f16_to_f32(codebook_half_bits<kType>(block)) * codebook_factor_scale<kType>();
}

// A codebook or ternary super-block as the products and the dequantization read it: its 256 int8
// values q, 16 integer factors scale (one per 16 values) and the float factor D it returns (see
// above). (inline: the portable kernels call it per super-block.)
template <DType kType>
inline float codebook_block_values(const uint8_t* block, int8_t* q, int16_t* scale) {
  static_assert(is_codebook_block(kType));
  const auto word16 = [&](int at) { return uint32_t(block[at] | block[at + 1] << 8); };
  const auto word32 = [&](int at) {
    uint32_t w;
    std::memcpy(&w, block + at, 4);
    return w;
  };
  const auto put8 = [&](int8_t* to, uint64_t magnitudes, uint8_t signs) {
    for (int k = 0; k < 8; ++k) {
      const auto m = int8_t(magnitudes >> (8 * k));
      to[k] = signs >> k & 1 ? int8_t(-m) : m;
    }
  };
  const auto put4 = [&](int8_t* to, uint32_t magnitudes, unsigned signs) {
    for (int k = 0; k < 4; ++k) {
      const auto m = int8_t(magnitudes >> (8 * k));
      to[k] = signs >> k & 1 ? int8_t(-m) : m;
    }
  };
  const auto ternary = [&](int8_t* to, uint64_t grid, int delta) {  // IQ1's 8 g +- 1
    for (int k = 0; k < 8; ++k) to[k] = int8_t(8 * int8_t(grid >> (8 * k)) + delta);
  };
  if constexpr (kType == DType::IQ2_XXS || kType == DType::IQ3_XXS) {
    constexpr bool kThree = kType == DType::IQ3_XXS;
    for (int j = 0; j < 8; ++j) {
      const uint32_t w = kThree ? word32(66 + 4 * j) : word32(2 + 8 * j + 4);
      for (int l = 0; l < 4; ++l) {
        const uint8_t signs = even_signs(w >> (7 * l) & 127);
        if constexpr (kThree) {
          put4(q + 32 * j + 8 * l, kIq3XxsGrid[block[2 + 8 * j + 2 * l]], signs);
          put4(q + 32 * j + 8 * l + 4, kIq3XxsGrid[block[2 + 8 * j + 2 * l + 1]], signs >> 4);
        } else {
          put8(q + 32 * j + 8 * l, kIq2XxsGrid[block[2 + 8 * j + l]], signs);
        }
      }
      scale[2 * j] = scale[2 * j + 1] = int16_t(2 * (w >> 28) + 1);
    }
    return codebook_factor<kType>(block);
  } else if constexpr (kType == DType::IQ2_XS || kType == DType::IQ2_S) {
    constexpr bool kS = kType == DType::IQ2_S;
    for (int j = 0; j < 8; ++j) {
      for (int l = 0; l < 4; ++l) {
        if constexpr (kS) {
          const int index = block[2 + 4 * j + l] | (block[66 + j] << (8 - 2 * l) & 0x300);
          put8(q + 32 * j + 8 * l, kIq2SGrid[index], block[34 + 4 * j + l]);
        } else {
          const uint32_t v = word16(2 + 2 * (4 * j + l));
          put8(q + 32 * j + 8 * l, kIq2XsGrid[v & 511], even_signs(v >> 9));
        }
      }
      const uint8_t ls = block[kS ? 74 + j : 66 + j];
      scale[2 * j] = int16_t(2 * (ls & 15) + 1);
      scale[2 * j + 1] = int16_t(2 * (ls >> 4) + 1);
    }
    return codebook_factor<kType>(block);
  } else if constexpr (kType == DType::IQ3_S) {
    for (int j = 0; j < 8; ++j) {
      const int qh = block[66 + j];
      for (int l = 0; l < 4; ++l) {
        const uint8_t signs = block[74 + 4 * j + l];
        put4(q + 32 * j + 8 * l, kIq3SGrid[block[2 + 8 * j + 2 * l] | (qh << (8 - 2 * l) & 256)], signs);
        put4(q + 32 * j + 8 * l + 4, kIq3SGrid[block[2 + 8 * j + 2 * l + 1] | (qh << (7 - 2 * l) & 256)], signs >> 4);
      }
      scale[2 * j] = scale[2 * j + 1] = int16_t(2 * (block[106 + j / 2] >> (4 * (j % 2)) & 15) + 1);
    }
    return codebook_factor<kType>(block);
  } else if constexpr (kType == DType::IQ1_S) {
    for (int j = 0; j < 8; ++j) {
      const uint32_t h = word16(34 + 2 * j);
      for (int l = 0; l < 4; ++l)
        ternary(q + 32 * j + 8 * l, kIq1SGrid[block[2 + 4 * j + l] | (h >> (3 * l) & 7) << 8], h & 0x8000 ? -1 : 1);
      scale[2 * j] = scale[2 * j + 1] = int16_t(2 * (h >> 12 & 7) + 1);
    }
    return codebook_factor<kType>(block);
  } else if constexpr (kType == DType::IQ1_M) {
    uint32_t sc[4];
    for (int k = 0; k < 4; ++k) sc[k] = word16(48 + 2 * k);
    for (int j = 0; j < 8; ++j) {
      for (int l = 0; l < 4; ++l) {
        const int qh = block[32 + 2 * j + l / 2] >> (4 * (l % 2));  // this 8's nibble
        ternary(q + 32 * j + 8 * l, kIq1SGrid[block[4 * j + l] | (qh & 7) << 8], qh & 8 ? -1 : 1);
      }
      scale[2 * j] = int16_t(2 * (sc[j / 2] >> (6 * (j % 2)) & 7) + 1);
      scale[2 * j + 1] = int16_t(2 * (sc[j / 2] >> (6 * (j % 2) + 3) & 7) + 1);
    }
    return codebook_factor<kType>(block);
  } else if constexpr (kType == DType::TQ2_0) {
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 4; ++l)
        for (int m = 0; m < 32; ++m) q[128 * h + 32 * l + m] = int8_t((block[32 * h + m] >> (2 * l) & 3) - 1);
    for (int j = 0; j < 16; ++j) scale[j] = 1;
    return codebook_factor<kType>(block);
  } else {  // TQ1_0
    constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    const auto digit = [&](uint8_t byte, int n) { return int8_t(((uint8_t(byte * kPow3[n]) * 3) >> 8) - 1); };
    int v = 0;
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 32; ++m) q[v++] = digit(block[m], n);
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 16; ++m) q[v++] = digit(block[32 + m], n);
    for (int n = 0; n < 4; ++n)
      for (int m = 0; m < 4; ++m) q[v++] = digit(block[48 + m], n);
    for (int j = 0; j < 16; ++j) scale[j] = 1;
    return codebook_factor<kType>(block);
  }
}

// IQ4_XS's sub-block j: its ls (0..63) from the block's scales_h and scales_l, as stored, and its
// step float(d * (ls - 32)), the factor of its table values (ggml's dl).
inline int iq4_xs_scale(const uint8_t* block, int j) {
  const int high = (block[2] | block[3] << 8) >> (2 * j) & 3;
  return (block[4 + j / 2] >> (4 * (j % 2)) & 15) | high << 4;
}
inline float iq4_xs_step(const uint8_t* block, int j) { return read_half(block) * float(iq4_xs_scale(block, j) - 32); }

}  // namespace crossmoe::quant
