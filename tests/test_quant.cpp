// Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K: hand-built blocks decode to the values ggml's layout gives, and quantizing
// then dequantizing stays within each format's bound (util/quant.hpp derives them).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "util/dtype.hpp"
#include "util/error.hpp"
#include "util/quant.hpp"

using namespace crossmoe;

namespace {

void put_half(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  ASSERT_EQ(f16_to_f32(h), v) << "test values must be exact halves";
  std::memcpy(p, &h, 2);
}

// Rows with the shapes weights have: mostly small values, some blocks with an outlier, an
// all-zero block, an all-positive block, one of tiny values (subnormal fp16 scales) and one of
// large values.
std::vector<float> test_row(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  for (int64_t i = 0; i < n; i += 97) x[i] *= 40.0f;
  for (int64_t i = 0; i < 32; ++i) x[i] = 0.0f;
  for (int64_t i = 32; i < 64; ++i) x[i] = std::fabs(x[i]) + 0.5f;
  for (int64_t i = 256; i < 288; ++i) x[i] *= 1e-5f;
  for (int64_t i = 512; i < 544; ++i) x[i] *= 3000.0f;
  return x;
}

}  // namespace

TEST(Quant, BlockSizesAndNames) {
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 64), 68u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_K, 512), 288u);
  EXPECT_EQ(dtype_row_bytes(DType::BF16, 3), 6u);
  EXPECT_EQ(dtype_block(DType::Q4_K), 256);
  EXPECT_EQ(dtype_row_bytes(DType::Q6_K, 512), 420u);
  EXPECT_EQ(dtype_block(DType::Q6_K), 256);
  EXPECT_EQ(dtype_row_bytes(DType::Q5_K, 512), 352u);
  EXPECT_EQ(dtype_block(DType::Q5_K), 256);
  EXPECT_EQ(dtype_size(DType::Q8_0), 0u);
  DType t;
  EXPECT_FALSE(parse_dtype("Q8_0", &t)) << "a safetensors dtype field never names a block type";
  ASSERT_TRUE(parse_block_dtype("q4_k", &t));
  EXPECT_EQ(t, DType::Q4_K);
  ASSERT_TRUE(parse_block_dtype("q5_k", &t));
  EXPECT_EQ(t, DType::Q5_K);
  EXPECT_EQ(dtype_name(DType::Q5_K), "Q5_K");
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(dtype_row_bytes(DType::Q5_0, 64), 44u);
  EXPECT_EQ(dtype_block(DType::Q5_0), 32);
  ASSERT_TRUE(parse_block_dtype("q4_0", &t));
  EXPECT_EQ(t, DType::Q4_0);
  ASSERT_TRUE(parse_block_dtype("Q5_0", &t));
  EXPECT_EQ(t, DType::Q5_0);
  EXPECT_EQ(dtype_row_bytes(DType::Q2_K, 512), 168u);
  EXPECT_EQ(dtype_row_bytes(DType::Q3_K, 512), 220u);
  ASSERT_TRUE(parse_block_dtype("q3_k", &t));
  EXPECT_EQ(t, DType::Q3_K);
  EXPECT_EQ(dtype_name(DType::Q2_K), "Q2_K");
  EXPECT_FALSE(parse_block_dtype("BF16", &t));
}

// The codebook and ternary types: ggml's block sizes (66, 74, 82, 98, 110, 50, 56, 54, 66 bytes per
// 256 values), read but never written.
TEST(Quant, CodebookTypesAreReadNotWritten) {
  const std::pair<DType, size_t> sizes[] = {{DType::IQ2_XXS, 66}, {DType::IQ2_XS, 74}, {DType::IQ2_S, 82},
                                            {DType::IQ3_XXS, 98}, {DType::IQ3_S, 110}, {DType::IQ1_S, 50},
                                            {DType::IQ1_M, 56},   {DType::TQ1_0, 54},  {DType::TQ2_0, 66}};
  std::vector<float> x(256, 0.5f);
  for (const auto& [type, bytes] : sizes) {
    EXPECT_EQ(dtype_row_bytes(type, 512), 2 * bytes) << dtype_name(type);
    DType parsed;
    ASSERT_TRUE(parse_block_dtype(dtype_name(type), &parsed));
    EXPECT_EQ(parsed, type);
    EXPECT_TRUE(quant::is_codebook_block(type));
    EXPECT_FALSE(quant::has_interleaved_layout(type));
    std::vector<uint8_t> out(bytes);
    try {
      quant::quantize_row(type, x.data(), 256, out.data());
      ADD_FAILURE() << dtype_name(type) << " written";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("llama-quantize --imatrix"), std::string::npos) << e.what();
    }
  }
}

// An IQ2_XXS block by hand: grid point 0 is eight 8s, sign run 1 flips value 0 (and, for an even
// count of minus signs, value 7), ls = 3: step d / 8 * 7. An IQ1_S block: grid point 0 is eight
// -1s, delta +1/8, ls = 0: values d * (-1 + 1/8). (tests/test_gguf.cpp holds every type to ggml's
// own floats on llama-quantize's files.)
TEST(Quant, CodebookHandBuiltBlocksDecode) {
  std::vector<uint8_t> iq2(66, 0);
  const uint16_t d = f32_to_f16(0.5f);
  std::memcpy(iq2.data(), &d, 2);
  const uint32_t word = 1u | 3u << 28;  // sub-block 0: sign run 0 = 1, ls 3
  std::memcpy(iq2.data() + 2 + 4, &word, 4);
  std::vector<float> y(256);
  quant::dequantize_row(DType::IQ2_XXS, iq2.data(), 256, y.data());
  const float step = 0.5f / 8 * 7;
  EXPECT_EQ(y[0], -8 * step);
  for (int i = 1; i < 7; ++i) EXPECT_EQ(y[i], 8 * step) << i;
  EXPECT_EQ(y[7], -8 * step) << "the eighth sign keeps the count of minus signs even";
  EXPECT_EQ(y[32], 0.5f / 8 * 8) << "sub-block 1: ls 0, no signs";
  std::vector<uint8_t> iq1(50, 0);
  std::memcpy(iq1.data(), &d, 2);
  quant::dequantize_row(DType::IQ1_S, iq1.data(), 256, y.data());
  EXPECT_EQ(quant::kIq1SGrid[0], 0xffffffffffffffffull) << "ggml's first IQ1 grid point: all -1";
  for (int i = 0; i < 256; ++i) ASSERT_EQ(y[i], 0.5f * (-1.0f + 0.125f)) << i;
}

TEST(Quant, Q8_0HandBuiltBlockDecodes) {
  uint8_t block[34];
  put_half(block, 0.375f);
  for (int i = 0; i < 32; ++i) block[2 + i] = uint8_t(int8_t(i * 8 - 128));  // -128 .. 120
  std::vector<float> y(32);
  quant::dequantize_row(DType::Q8_0, block, 32, y.data());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.375f * float(i * 8 - 128)) << i;
}

// ggml's block_q4_0 / block_q5_0: byte i of the 16 holds value i (low nibble) and value i + 16
// (high nibble); Q5_0's 5th bit of value i is bit i of the little-endian word after d.
TEST(Quant, Q4_0AndQ5_0HandBuiltBlocksDecode) {
  uint8_t q4[18], q5[22];
  put_half(q4, 0.375f);
  put_half(q5, -0.75f);
  for (int i = 0; i < 16; ++i) q4[2 + i] = q5[6 + i] = uint8_t(i | (15 - i) << 4);
  const uint32_t qh = 0x8001a5c3u;  // bytes c3 a5 01 80
  std::memcpy(q5 + 2, &qh, 4);
  std::vector<float> y4(32), y5(32);
  quant::dequantize_row(DType::Q4_0, q4, 32, y4.data());
  quant::dequantize_row(DType::Q5_0, q5, 32, y5.data());
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(y4[i], 0.375f * float(i - 8)) << i;
    EXPECT_EQ(y4[i + 16], 0.375f * float(7 - i)) << i;
    EXPECT_EQ(y5[i], -0.75f * float((i | int((qh >> i) & 1) << 4) - 16)) << i;
    EXPECT_EQ(y5[i + 16], -0.75f * float((15 - i | int((qh >> (i + 16)) & 1) << 4) - 16)) << i;
  }
  EXPECT_EQ(y5[0], -0.75f * float(0 + 16 - 16)) << "bit 0 set: q = 16";
  EXPECT_EQ(y5[31], -0.75f * float(0 + 16 - 16)) << "bit 31 set: value 31's nibble 0, q = 16";
  EXPECT_EQ(y5[2], -0.75f * float(2 - 16)) << "bit 2 clear";
}

// ggml's block_iq4_nl: Q4_0's bytes, each nibble an index into the 16 values of ggml's
// kvalues_iq4nl (ggml-common.h), written out here as that file has them.
TEST(Quant, Iq4NlHandBuiltBlockDecodes) {
  const int8_t table[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  uint8_t block[18];
  put_half(block, -0.375f);
  for (int i = 0; i < 16; ++i) block[2 + i] = uint8_t(i | (15 - i) << 4);
  std::vector<float> y(32);
  quant::dequantize_row(DType::IQ4_NL, block, 32, y.data());
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(y[i], -0.375f * float(table[i])) << i;
    EXPECT_EQ(y[i + 16], -0.375f * float(table[15 - i])) << i;
  }
  DType t;
  ASSERT_TRUE(parse_block_dtype("iq4_nl", &t));
  EXPECT_EQ(t, DType::IQ4_NL);
  EXPECT_EQ(dtype_row_bytes(DType::IQ4_NL, 64), 36u);
}

// ggml's block_mxfp4: byte e | Q4_0's 16 bytes of nibbles, each an index into ggml's kvalues_mxfp4
// (0, 1, 2, 3, 4, 6, 8, 12 and their negatives, written out here as ggml-common.h has them), times
// GGML_E8M0_TO_FP32_HALF(e) = 2^(e - 128): the denormals 2^-128 and 2^-127 for e = 0 and 1.
TEST(Quant, Mxfp4HandBuiltBlockDecodes) {
  const int8_t table[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (int e : {0, 1, 2, 100, 127, 128, 133, 254}) {
    uint8_t block[17];
    block[0] = uint8_t(e);
    for (int i = 0; i < 16; ++i) block[1 + i] = uint8_t(i | (15 - i) << 4);
    std::vector<float> y(32);
    quant::dequantize_row(DType::MXFP4, block, 32, y.data());
    const float step = std::ldexp(1.0f, e - 128);
    ASSERT_NE(step, 0.0f);
    for (int i = 0; i < 16; ++i) {
      EXPECT_EQ(y[i], step * float(table[i])) << "e " << e << " value " << i;
      EXPECT_EQ(y[i + 16], step * float(table[15 - i])) << "e " << e << " value " << i + 16;
    }
  }
  DType t;
  ASSERT_TRUE(parse_block_dtype("mxfp4", &t));
  EXPECT_EQ(t, DType::MXFP4);
  EXPECT_EQ(dtype_row_bytes(DType::MXFP4, 64), 34u);
}

// ggml's block_iq4_xs: d | scales_h | scales_l[4] | qs[128]; sub-block j's 6-bit ls has its low
// 4 bits in nibble j % 2 of scales_l[j / 2] and its top 2 in bits 2j, 2j + 1 of scales_h; its
// values are float(d * (ls - 32)) times the table's, its 16 bytes of nibbles as an IQ4_NL block's.
TEST(Quant, Iq4XsHandBuiltBlockDecodes) {
  const int8_t table[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  const int ls[8] = {0, 63, 32, 31, 33, 17, 48, 5};
  uint8_t block[136] = {};
  put_half(block, 0.25f);
  uint16_t scales_h = 0;
  for (int j = 0; j < 8; ++j) {
    block[4 + j / 2] |= uint8_t((ls[j] & 15) << (4 * (j % 2)));
    scales_h |= uint16_t((ls[j] >> 4) << (2 * j));
  }
  block[2] = uint8_t(scales_h & 255);
  block[3] = uint8_t(scales_h >> 8);
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 16; ++i) block[8 + 16 * j + i] = uint8_t((i + j) % 16 | (15 - i) << 4);
  std::vector<float> y(256);
  quant::dequantize_row(DType::IQ4_XS, block, 256, y.data());
  for (int j = 0; j < 8; ++j) {
    const float step = 0.25f * float(ls[j] - 32);
    for (int i = 0; i < 16; ++i) {
      EXPECT_EQ(y[32 * j + i], step * float(table[(i + j) % 16])) << j << " " << i;
      EXPECT_EQ(y[32 * j + i + 16], step * float(table[15 - i])) << j << " " << i;
    }
  }
  EXPECT_EQ(dtype_row_bytes(DType::IQ4_XS, 512), 272u);
}

TEST(Quant, Q4_KHandBuiltBlockDecodes) {
  // Scales and mins with high bits set in sub-blocks 4..7, packed by hand from the layout:
  // bytes 0-3 sc[0..3] | (sc[4..7] >> 4) << 6, bytes 4-7 m[0..3] | (m[4..7] >> 4) << 6,
  // bytes 8-11 (sc[4..7] & 15) | (m[4..7] & 15) << 4.
  const int sc[8] = {1, 2, 63, 17, 40, 33, 63, 5}, m[8] = {0, 7, 62, 31, 48, 1, 63, 20};
  uint8_t block[144] = {};
  put_half(block, 0.25f);
  put_half(block + 2, 0.125f);
  uint8_t* s = block + 4;
  s[0] = 1 | (2 << 6), s[1] = 2 | (2 << 6), s[2] = 63 | (3 << 6), s[3] = 17 | (0 << 6);
  s[4] = 0 | (3 << 6), s[5] = 7 | (0 << 6), s[6] = 62 | (3 << 6), s[7] = 31 | (1 << 6);
  s[8] = 8 | (0 << 4), s[9] = 1 | (1 << 4), s[10] = 15 | (15 << 4), s[11] = 5 | (4 << 4);
  for (int j = 0; j < 8; ++j) {
    int scale, min;
    quant::q4_k_scale_min(s, j, &scale, &min);
    EXPECT_EQ(scale, sc[j]) << j;
    EXPECT_EQ(min, m[j]) << j;
  }
  for (int i = 0; i < 128; ++i) block[16 + i] = uint8_t((i * 7) % 256);
  std::vector<float> y(256);
  quant::dequantize_row(DType::Q4_K, block, 256, y.data());
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 32; ++i) {
      const uint8_t byte = block[16 + (j / 2) * 32 + i];
      const int q = j % 2 == 0 ? byte & 15 : byte >> 4;
      EXPECT_FLOAT_EQ(y[j * 32 + i], 0.25f * float(sc[j]) * float(q) - 0.125f * float(m[j])) << j << " " << i;
    }
}

TEST(Quant, Q5_KHandBuiltBlockDecodes) {
  // ggml's block_q5_K: fp16 d, fp16 dmin, Q4_K's 12 bytes of scales and mins, qh[32] (bit j of
  // byte i: q[j][i]'s top bit), then qs[128] as Q4_K's nibbles. Set by hand from that layout.
  uint8_t block[176] = {};
  put_half(block, 0.25f);
  put_half(block + 2, 0.125f);
  uint8_t* s = block + 4;
  s[0] = 3, s[1] = 5, s[2] = 63, s[3] = 1;   // sc[0..3]
  s[4] = 2, s[5] = 0, s[6] = 9, s[7] = 63;   // m[0..3]
  s[8] = 4 | (6 << 4), s[11] = 15 | (15 << 4);  // sc[4] = 4, m[4] = 6; sc[7] = 15, m[7] = 15
  s[3] |= 3 << 6, s[7] &= 63;                   // sc[7]'s top bits 3: sc[7] = 63
  uint8_t* qh = block + 16;
  uint8_t* qs = block + 48;
  qs[0] = 0x7a;    // q[0][0] low 10, q[1][0] low 7
  qh[0] = 0x02;    // q[1][0]'s top bit: 7 + 16
  qs[31] = 0x0f;   // q[0][31] = 15
  qh[31] = 0x01;   // + 16 = 31
  qs[64 + 5] = 0x30;  // q[4][5] low 0, q[5][5] low 3
  qh[5] = 0x10;       // q[4][5] top bit: 16
  qs[96 + 7] = 0xf0;  // q[7][7] low 15
  qh[7] = 0x80;       // + 16 = 31
  std::vector<float> y(256);
  quant::dequantize_row(DType::Q5_K, block, 256, y.data());
  EXPECT_EQ(y[0], 0.25f * 3.0f * 10.0f - 0.125f * 2.0f);
  EXPECT_EQ(y[32], 0.25f * 5.0f * 23.0f - 0.125f * 0.0f);
  EXPECT_EQ(y[31], 0.25f * 3.0f * 31.0f - 0.125f * 2.0f);
  EXPECT_EQ(y[4 * 32 + 5], 0.25f * 4.0f * 16.0f - 0.125f * 6.0f);
  EXPECT_EQ(y[5 * 32 + 5], 0.25f * 0.0f * 3.0f - 0.125f * 0.0f);
  EXPECT_EQ(y[7 * 32 + 7], 0.25f * 63.0f * 31.0f - 0.125f * 15.0f);
  EXPECT_EQ(y[2 * 32 + 1], -0.125f * 9.0f) << "q = 0: the sub-block's min";
}

TEST(Quant, Q6_KHandBuiltBlockDecodes) {
  // Bytes set by hand from ggml's layout: ql (0..127) low 4 bits, qh (128..191) high 2 bits,
  // int8 scales (192..207), fp16 d (208).
  uint8_t block[210] = {};
  put_half(block + 208, 0.5f);
  for (int j = 0; j < 16; ++j) block[192 + j] = uint8_t(int8_t(j * 17 - 128));  // -128, -111, ..., 127
  block[0] = 0xa5;        // value 0: low nibble 5; value 64: high nibble 10
  block[128] = 0xe4;      // qh byte 0: bits 0-1 = 0 (value 0), 2-3 = 1 (32), 4-5 = 2 (64), 6-7 = 3 (96)
  block[32] = 0x3c;       // value 32: low nibble 12; value 96: high nibble 3
  block[64 + 31] = 0x0f;  // half 1, l = 31: value 128 + 31, low nibble 15 (its qh bits 0)
  block[160 + 31] = 0x03; // half 1's qh byte 31: value 159's top bits 3
  std::vector<float> y(256);
  quant::dequantize_row(DType::Q6_K, block, 256, y.data());
  EXPECT_EQ(y[0], 0.5f * -128.0f * float(5 - 32));
  EXPECT_EQ(y[32], 0.5f * float(2 * 17 - 128) * float((12 | 1 << 4) - 32));   // sub-block 2
  EXPECT_EQ(y[64], 0.5f * float(4 * 17 - 128) * float((10 | 2 << 4) - 32));   // sub-block 4
  EXPECT_EQ(y[96], 0.5f * float(6 * 17 - 128) * float((3 | 3 << 4) - 32));    // sub-block 6
  EXPECT_EQ(y[159], 0.5f * float(9 * 17 - 128) * float((15 | 3 << 4) - 32));  // sub-block 9
  EXPECT_EQ(y[1], 0.5f * -128.0f * -32.0f) << "bytes of zero are q = 0, value -32 * scale * d";
  EXPECT_EQ(y[255], 0.5f * 127.0f * -32.0f);
}

// ggml's block_q2_K: scales[16] (sc low nibble, m high), qs[64] (value 128 h + 32 k + l at bits
// 2k of byte 32 h + l), fp16 d, fp16 dmin; block_q3_K: hmask[32] (bit 4 h + k of byte l: the
// value's top bit), qs[64] as Q2_K's, scales[12] (6-bit, stored + 32), fp16 d. Set by hand from
// that layout: the value 128 h + 32 k + l gets q = (h + k + l) % 4 (and Q3_K's top bit when l is
// odd); sub-block j's scale is j % 16 (Q2_K, min 15 - j) or j * 4 - 32 (Q3_K: stored 4 j).
TEST(Quant, Q2_KAndQ3_KHandBuiltBlocksDecode) {
  uint8_t q2[84] = {}, q3[110] = {};
  for (int j = 0; j < 16; ++j) q2[j] = uint8_t(j | (15 - j) << 4);
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) {
        const int q = (h + k + l) % 4;
        q2[16 + 32 * h + l] |= uint8_t(q << (2 * k));
        q3[32 + 32 * h + l] |= uint8_t(q << (2 * k));
        if (l % 2 == 1) q3[l] |= uint8_t(1 << (4 * h + k));
      }
  for (int j = 0; j < 16; ++j) {
    const int stored = 4 * j;  // 0..60
    q3[96 + (j < 8 ? j : j - 8)] |= uint8_t((stored & 15) << (j < 8 ? 0 : 4));
    q3[96 + 8 + j % 4] |= uint8_t((stored >> 4) << (2 * (j / 4)));
  }
  put_half(q2 + 80, 0.5f);
  put_half(q2 + 82, 0.25f);
  put_half(q3 + 108, 0.125f);
  std::vector<float> y2(256), y3(256);
  quant::dequantize_row(DType::Q2_K, q2, 256, y2.data());
  quant::dequantize_row(DType::Q3_K, q3, 256, y3.data());
  for (int v = 0; v < 256; ++v) {
    const int h = v / 128, k = v % 128 / 32, l = v % 32, j = v / 16, q = (h + k + l) % 4;
    EXPECT_EQ(y2[v], 0.5f * float(j) * float(q) - 0.25f * float(15 - j)) << "Q2_K value " << v;
    EXPECT_EQ(y3[v], 0.125f * float(4 * j - 32) * float(q + (l % 2 == 1 ? 4 : 0) - 4)) << "Q3_K value " << v;
  }
}

TEST(Quant, Q4_KScalesAndMinsPackEveryValue) {
  std::mt19937 rng(1);
  for (int round = 0; round < 200; ++round) {
    int sc[8], m[8];
    for (int j = 0; j < 8; ++j) sc[j] = int(rng() % 64), m[j] = int(rng() % 64);
    if (round < 64) sc[round % 8] = round, m[7 - round % 8] = 63 - round;
    uint8_t packed[12];
    quant::q4_k_pack_scales_mins(sc, m, packed);
    for (int j = 0; j < 8; ++j) {
      int scale, min;
      quant::q4_k_scale_min(packed, j, &scale, &min);
      ASSERT_EQ(scale, sc[j]);
      ASSERT_EQ(min, m[j]);
    }
  }
}

TEST(Quant, Q4_KScalesAndMinsUnpackAllAtOnceAsOneByOne) {
  // Any 12 bytes (every bit pattern is a valid packing): the word-at-a-time unpack of the
  // kernels gives q4_k_scale_min's values for all 8 sub-blocks.
  std::mt19937 rng(7);
  for (int round = 0; round < 2000; ++round) {
    uint8_t packed[12];
    for (uint8_t& b : packed) b = uint8_t(round < 256 ? round : rng());
    uint8_t scales[8], mins[8];
    quant::q4_k_scales_mins(packed, scales, mins);
    for (int j = 0; j < 8; ++j) {
      int scale, min;
      quant::q4_k_scale_min(packed, j, &scale, &min);
      ASSERT_EQ(scales[j], scale) << round << " " << j;
      ASSERT_EQ(mins[j], min) << round << " " << j;
    }
  }
}

TEST(Quant, Q8_0RoundTripWithinHalfAStep) {
  const int64_t n = 2048;
  const std::vector<float> x = test_row(n, 7);
  std::vector<uint8_t> q(dtype_row_bytes(DType::Q8_0, n));
  std::vector<float> y(n);
  quant::quantize_row(DType::Q8_0, x.data(), n, q.data());
  quant::dequantize_row(DType::Q8_0, q.data(), n, y.data());
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = quant::read_half(q.data() + b * 34);
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    // d is max|x| / 127 rounded up to a half: never below it, at most one half-ulp above.
    EXPECT_GE(d, amax / 127.0f);
    EXPECT_LE(d, amax / 127.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
    for (int i = 0; i < 32; ++i) {
      const int64_t k = b * 32 + i;
      EXPECT_LE(std::fabs(x[k] - y[k]), d / 2 + 1e-6f * std::fabs(x[k])) << "element " << k;
    }
  }
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.0f);
}

// IQ4_NL: the block's largest magnitude x_m on the table's -127, |d| = |x_m| / 127 rounded up, each
// value the nearest of the 16: |x - value| <= 14 |d| (the gap 113..127 at the table's end), x_m's
// own value within |d| / 1024 * 127 of it (d's rounding), and no other entry nearer to any x.
TEST(Quant, Iq4NlRoundTripsToTheNearestTableValue) {
  const int64_t n = 2048;
  std::vector<float> x = test_row(n, 12);
  std::fill_n(x.begin() + 64, 32, 0.0f);  // a block of zeros
  std::vector<uint8_t> q(dtype_row_bytes(DType::IQ4_NL, n));
  std::vector<float> y(n);
  quant::quantize_row(DType::IQ4_NL, x.data(), n, q.data());
  quant::dequantize_row(DType::IQ4_NL, q.data(), n, y.data());
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = quant::read_half(q.data() + b * 18);
    float extreme = 0.0f;
    for (int i = 0; i < 32; ++i)
      if (std::fabs(x[b * 32 + i]) > std::fabs(extreme)) extreme = x[b * 32 + i];
    EXPECT_GE(std::fabs(d), std::fabs(extreme) / 127.0f);
    EXPECT_LE(std::fabs(d), std::fabs(extreme) / 127.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
    if (extreme != 0.0f) EXPECT_EQ(d < 0.0f, extreme > 0.0f) << "x_m maps to -127";
    for (int i = 0; i < 32; ++i) {
      const int64_t k = b * 32 + i;
      ASSERT_LE(std::fabs(x[k] - y[k]), 14.0f * std::fabs(d) + 1e-6f * std::fabs(x[k])) << "element " << k;
      for (int8_t v : quant::kIq4NlValues)
        ASSERT_LE(std::fabs(x[k] - y[k]), std::fabs(x[k] - d * float(v)) * (1.0f + 1e-6f) + 1e-12f) << "element " << k;
    }
  }
  for (int i = 64; i < 96; ++i) EXPECT_EQ(y[i], 0.0f);
}

// MXFP4: ggml's rule (quant.hpp): e = floor(log2 max|x|) - 2 + 127, so the largest magnitude lies in
// 8..16 steps; each value the nearest of the 16 table values times the step, |x - value| <= 4 steps
// (past 12 steps, the table's end); a block of zeros gives e = 0 and zeros.
TEST(Quant, Mxfp4RoundTripsToTheNearestTableValue) {
  const int64_t n = 2048;
  std::vector<float> x = test_row(n, 13);
  std::fill_n(x.begin() + 64, 32, 0.0f);  // a block of zeros
  x[128] = 4.0f;                          // a block whose largest magnitude is a power of two
  std::vector<uint8_t> q(dtype_row_bytes(DType::MXFP4, n));
  std::vector<float> y(n);
  quant::quantize_row(DType::MXFP4, x.data(), n, q.data());
  quant::dequantize_row(DType::MXFP4, q.data(), n, y.data());
  for (int64_t b = 0; b < n / 32; ++b) {
    const uint8_t e = q[size_t(b) * 17];
    const float step = quant::mxfp4_step(e);
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
    if (amax == 0.0f) {
      EXPECT_EQ(e, 0) << "block " << b;
    } else {
      EXPECT_GE(amax / step, 8.0f) << "block " << b;
      EXPECT_LT(amax / step, 16.0f) << "block " << b;
    }
    for (int i = 0; i < 32; ++i) {
      const int64_t k = b * 32 + i;
      ASSERT_LE(std::fabs(x[k] - y[k]), 4.0f * step) << "element " << k;
      for (int8_t v : quant::kMxfp4Values) ASSERT_LE(std::fabs(x[k] - y[k]), std::fabs(x[k] - step * float(v))) << "element " << k;
    }
  }
  EXPECT_EQ(q[4 * 17], 127 + 2 - 2) << "max |x| = 4: e = log2(4) - 2 + 127";
  for (int i = 64; i < 96; ++i) EXPECT_EQ(y[i], 0.0f);
}

// IQ4_XS: per sub-block IQ4_NL's ideal step s_j = -x_m / 127, d = max|s_j| / 31 rounded up, the step
// float(d * (ls - 32)) at least |s_j| and under |s_j| + d, of s_j's sign; each value the nearest of
// the 16 times the step: |x - value| <= 14 |step|.
TEST(Quant, Iq4XsRoundTripsToTheNearestTableValue) {
  const int64_t n = 2048;
  std::vector<float> x = test_row(n, 13);
  std::fill_n(x.begin() + 256, 256, 0.0f);  // a super-block of zeros
  std::fill_n(x.begin() + 64, 32, 0.0f);    // and a sub-block
  for (int i = 0; i < 32; ++i) x[512 + 32 + i] *= 40.0f;  // a sub-block far larger than the others
  std::vector<uint8_t> q(dtype_row_bytes(DType::IQ4_XS, n));
  std::vector<float> y(n);
  quant::quantize_row(DType::IQ4_XS, x.data(), n, q.data());
  quant::dequantize_row(DType::IQ4_XS, q.data(), n, y.data());
  for (int64_t b = 0; b < n / 256; ++b) {
    const uint8_t* block = q.data() + b * 136;
    const float d = quant::read_half(block);
    float largest = 0.0f;
    for (int64_t j = 0; j < 8; ++j) {
      float extreme = 0.0f;
      for (int i = 0; i < 32; ++i)
        if (std::fabs(x[b * 256 + j * 32 + i]) > std::fabs(extreme)) extreme = x[b * 256 + j * 32 + i];
      largest = std::max(largest, std::fabs(extreme) / 127.0f);
      const float step = quant::iq4_xs_step(block, int(j));
      EXPECT_GE(std::fabs(step), std::fabs(extreme) / 127.0f * (1.0f - 1e-6f)) << b << " " << j;
      EXPECT_LE(std::fabs(step), std::fabs(extreme) / 127.0f + d * (1.0f + 1e-6f)) << b << " " << j;
      if (extreme != 0.0f) EXPECT_EQ(step < 0.0f, extreme > 0.0f) << "x_m maps to -127";
      for (int i = 0; i < 32; ++i) {
        const int64_t k = b * 256 + j * 32 + i;
        ASSERT_LE(std::fabs(x[k] - y[k]), 14.0f * std::fabs(step) + 1e-6f * std::fabs(x[k])) << "element " << k;
        for (int8_t v : quant::kIq4NlValues)
          ASSERT_LE(std::fabs(x[k] - y[k]), std::fabs(x[k] - step * float(v)) * (1.0f + 1e-6f) + 1e-12f) << "element " << k;
      }
    }
    EXPECT_GE(d, largest / 31.0f);
    EXPECT_LE(d, largest / 31.0f * (1.0f + 1.0f / 1024.0f) + 6e-8f);
  }
  for (int i = 256; i < 512; ++i) EXPECT_EQ(y[i], 0.0f);
  for (int i = 64; i < 96; ++i) EXPECT_EQ(y[i], 0.0f);
}

// Q4_0 / Q5_0: Q8_0's grid with 7 / 15 steps each side, d rounded up: |x - value| <= d / 2.
TEST(Quant, Q4_0AndQ5_0RoundTripWithinHalfAStep) {
  const int64_t n = 2048;
  const std::vector<float> x = test_row(n, 11);
  for (DType type : {DType::Q4_0, DType::Q5_0}) {
    const float top = type == DType::Q4_0 ? 7.0f : 15.0f;
    const size_t block_bytes = dtype_row_bytes(type, 32);
    std::vector<uint8_t> q(dtype_row_bytes(type, n));
    std::vector<float> y(n);
    quant::quantize_row(type, x.data(), n, q.data());
    quant::dequantize_row(type, q.data(), n, y.data());
    for (int64_t b = 0; b < n / 32; ++b) {
      const float d = quant::read_half(q.data() + b * block_bytes);
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
      EXPECT_GE(d, amax / top);
      EXPECT_LE(d, amax / top * (1.0f + 1.0f / 1024.0f) + 6e-8f);
      for (int i = 0; i < 32; ++i) {
        const int64_t k = b * 32 + i;
        ASSERT_LE(std::fabs(x[k] - y[k]), d / 2 + 1e-6f * std::fabs(x[k])) << dtype_name(type) << " element " << k;
      }
    }
    for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.0f) << dtype_name(type);
  }
}

// Q4_1 / Q5_1: the grid [m, m + top d] from the block's min (rounded down) to its max (step
// rounded up): |x - value| <= d / 2.
TEST(Quant, Q4_1AndQ5_1RoundTripWithinHalfAStep) {
  const int64_t n = 2048;
  std::vector<float> x = test_row(n, 12);
  for (int i = 0; i < 32; ++i) x[size_t(i)] = 3.0f + 0.01f * float(i);  // a block of positive values only
  for (DType type : {DType::Q4_1, DType::Q5_1}) {
    const size_t block_bytes = dtype_row_bytes(type, 32);
    std::vector<uint8_t> q(dtype_row_bytes(type, n));
    std::vector<float> y(n);
    quant::quantize_row(type, x.data(), n, q.data());
    quant::dequantize_row(type, q.data(), n, y.data());
    for (int64_t b = 0; b < n / 32; ++b) {
      const float d = quant::read_half(q.data() + b * block_bytes), m = quant::read_half(q.data() + b * block_bytes + 2);
      EXPECT_LE(m, *std::min_element(x.begin() + b * 32, x.begin() + b * 32 + 32)) << dtype_name(type) << " block " << b;
      for (int i = 0; i < 32; ++i) {
        const int64_t k = b * 32 + i;
        ASSERT_LE(std::fabs(x[k] - y[k]), d / 2 + 1e-6f * (std::fabs(x[k]) + std::fabs(m))) << dtype_name(type) << " element " << k;
      }
    }
  }
}

namespace {

// A sub-block's factors in Q4_K's, Q5_K's or Q2_K's grid: d, dmin, its scale and min.
struct AffineSubBlock {
  float d, dmin;
  int sc, m;
};
AffineSubBlock affine_sub_block(DType type, const uint8_t* block, int j) {
  if (type == DType::Q2_K) return {quant::read_half(block + 80), quant::read_half(block + 82), block[j] & 15, block[j] >> 4};
  AffineSubBlock f{quant::read_half(block), quant::read_half(block + 2), 0, 0};
  quant::q4_k_scale_min(block + 4, j, &f.sc, &f.m);
  return f;
}

// Q4_K, Q5_K and Q2_K: each sub-block's grid of `top` steps covers its values (quant.hpp's bound).
void expect_affine_k_round_trip(DType type, int top, uint32_t seed) {
  const int64_t n = 2048;
  const int sub = type == DType::Q2_K ? 16 : 32;
  const std::vector<float> x = test_row(n, seed);
  const size_t block_bytes = dtype_row_bytes(type, 256);
  std::vector<uint8_t> q(dtype_row_bytes(type, n));
  std::vector<float> y(n);
  quant::quantize_row(type, x.data(), n, q.data());
  quant::dequantize_row(type, q.data(), n, y.data());
  double total = 0.0;  // errors in units of their sub-block's step
  int counted = 0;
  for (int64_t b = 0; b < n / 256; ++b) {
    const uint8_t* block = q.data() + b * block_bytes;
    for (int j = 0; j < 256 / sub; ++j) {
      const AffineSubBlock f = affine_sub_block(type, block, j);
      const float* xs = x.data() + b * 256 + j * sub;
      float lo = 0.0f, hi = xs[0];
      for (int i = 0; i < sub; ++i) lo = std::min(lo, xs[i]), hi = std::max(hi, xs[i]);
      const float step = f.d * float(f.sc);
      EXPECT_LT(step, (hi - lo + f.dmin) / float(top) + f.d + 1e-6f * (hi - lo))
          << dtype_name(type) << " block " << b << " sub " << j;
      for (int i = 0; i < sub; ++i) {
        const int64_t k = b * 256 + j * sub + i;
        const float err = std::fabs(x[k] - y[k]);
        EXPECT_LE(err, step / 2 + 1e-6f * (float(top) * step + f.dmin * float(f.m))) << dtype_name(type) << " element " << k;
        if (step > 0) total += err / step, ++counted;
      }
    }
  }
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.0f) << "an all-zero sub-block decodes to zeros";
  EXPECT_LT(total / counted, 0.3) << "rounding to nearest errs by a quarter step on average";
}

}  // namespace

TEST(Quant, Q4_KRoundTripWithinHalfASubBlockStep) { expect_affine_k_round_trip(DType::Q4_K, 15, 11); }

// Q5_K's steps are about half Q4_K's on the same values: its grid has 31 steps.
TEST(Quant, Q5_KRoundTripWithinHalfASubBlockStep) {
  expect_affine_k_round_trip(DType::Q5_K, 31, 12);
  const int64_t n = 2048;
  const std::vector<float> x = test_row(n, 12);
  double err[2] = {};
  for (int k = 0; k < 2; ++k) {
    const DType type = k == 0 ? DType::Q4_K : DType::Q5_K;
    std::vector<uint8_t> q(dtype_row_bytes(type, n));
    std::vector<float> y(n);
    quant::quantize_row(type, x.data(), n, q.data());
    quant::dequantize_row(type, q.data(), n, y.data());
    for (int64_t i = 0; i < n; ++i) err[k] += std::fabs(double(x[i]) - y[i]);
  }
  EXPECT_LT(err[1], 0.6 * err[0]) << "Q5_K's mean error against Q4_K's";
}

namespace {

// Q6_K and Q3_K: symmetric sub-blocks of 16, each one's step reaching max|x_j| in `steps` steps, in
// units of d rounded up (quant.hpp's bound).
void expect_symmetric_k_round_trip(DType type, float steps, uint32_t seed) {
  const int64_t n = 2048;
  const std::vector<float> x = test_row(n, seed);
  const size_t block_bytes = dtype_row_bytes(type, 256);
  std::vector<uint8_t> q(dtype_row_bytes(type, n));
  std::vector<float> y(n);
  quant::quantize_row(type, x.data(), n, q.data());
  quant::dequantize_row(type, q.data(), n, y.data());
  double total = 0.0;  // errors in units of their sub-block's step
  int counted = 0;
  for (int64_t b = 0; b < n / 256; ++b) {
    const uint8_t* block = q.data() + b * block_bytes;
    float d, step[16];
    if (type == DType::Q6_K) {
      d = quant::read_half(block + 208);
      for (int j = 0; j < 16; ++j) step[j] = d * float(int8_t(block[192 + j]));
    } else {
      uint8_t values[256];
      int16_t scale[16], min[16];
      quant::low_bit_k_values<DType::Q3_K>(block, values, scale, min);
      d = quant::read_half(block + 108);
      for (int j = 0; j < 16; ++j) step[j] = d * float(scale[j]);
    }
    for (int j = 0; j < 16; ++j) {
      const float* xs = x.data() + b * 256 + j * 16;
      float amax = 0.0f;
      for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(xs[i]));
      EXPECT_GE(step[j], 0.0f);
      EXPECT_LE(step[j], amax / steps + d + 1e-6f * amax) << dtype_name(type) << " block " << b << " sub " << j;
      for (int i = 0; i < 16; ++i) {
        const int64_t k = b * 256 + j * 16 + i;
        const float err = std::fabs(x[k] - y[k]);
        EXPECT_LE(err, step[j] / 2 + 1e-6f * amax) << dtype_name(type) << " element " << k;
        if (step[j] > 0) total += err / step[j], ++counted;
      }
    }
  }
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], 0.0f) << "an all-zero sub-block decodes to zeros";
  EXPECT_LT(total / counted, 0.3) << "rounding to nearest errs by a quarter step on average";
}

}  // namespace

TEST(Quant, Q6_KRoundTripWithinHalfASubBlockStep) { expect_symmetric_k_round_trip(DType::Q6_K, 31.0f, 13); }

TEST(Quant, Q2_KRoundTripWithinHalfASubBlockStep) { expect_affine_k_round_trip(DType::Q2_K, 3, 15); }

// Q3_K's steps reach max|x_j| at 3.5 (q - 4 in -4..3: 3.5 rounds to 4, clamped to 3).
TEST(Quant, Q3_KRoundTripWithinHalfASubBlockStep) { expect_symmetric_k_round_trip(DType::Q3_K, 3.5f, 16); }

// Q3_K's and Q2_K's fewer bits cost accuracy in order: Q2_K's mean error above Q3_K's, Q3_K's above
// Q4_K's.
TEST(Quant, FewerBitsErrMoreQ2_KQ3_KQ4_K) {
  const int64_t n = 4096;
  const std::vector<float> x = test_row(n, 17);
  double err[3] = {};
  const DType types[3] = {DType::Q2_K, DType::Q3_K, DType::Q4_K};
  for (int k = 0; k < 3; ++k) {
    std::vector<uint8_t> q(dtype_row_bytes(types[k], n));
    std::vector<float> y(n);
    quant::quantize_row(types[k], x.data(), n, q.data());
    quant::dequantize_row(types[k], q.data(), n, y.data());
    for (int64_t i = 0; i < n; ++i) err[k] += std::fabs(double(x[i]) - y[i]);
  }
  EXPECT_GT(err[0], err[1]);
  EXPECT_GT(err[1], err[2]);
}

TEST(Quant, RejectsRowsOfPartialBlocksAndValuesItCannotStore) {
  std::vector<float> x(288, 1.0f);
  std::vector<uint8_t> out(1024);
  try {
    quant::quantize_row(DType::Q4_K, x.data(), 288, out.data());
    FAIL() << "288 columns are not whole Q4_K blocks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks of 256"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quant::quantize_row(DType::Q8_0, x.data(), 48, out.data()), Error);
  EXPECT_THROW(quant::dequantize_row(DType::Q8_0, out.data(), 40, x.data()), Error);
  x[3] = std::nanf("");
  EXPECT_THROW(quant::quantize_row(DType::Q8_0, x.data(), 32, out.data()), Error);
  x[3] = 1e9f;
  EXPECT_THROW(quant::quantize_row(DType::Q8_0, x.data(), 32, out.data()), Error);
  EXPECT_THROW(quant::quantize_row(DType::BF16, x.data(), 32, out.data()), Error);
}

// Q6_K's interleaved layout (quant.hpp): ql's and qh's 6 spans of 32 bytes per row in the quants'
// chunks, the scales per sub-block in slot order, the steps per row; deinterleaving gives the rows
// back. Rows of different super-blocks of a test row, so every field differs between rows.
TEST(Quant, InterleavedQ6_KBlocksFollowTheLayoutAndRoundTrip) {
  const int slot_of_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  const int64_t cols = 2048;
  std::vector<uint8_t> whole(dtype_row_bytes(DType::Q6_K, cols)), rows(8 * 210), group(8 * 210), back(8 * 210);
  quant::quantize_row(DType::Q6_K, test_row(cols, 60).data(), cols, whole.data());
  for (int r = 0; r < 8; ++r) std::memcpy(rows.data() + 210 * r, whole.data() + 210 * r, 210);
  quant::interleave8_block(DType::Q6_K, rows.data(), 210, group.data());
  for (int r = 0; r < 8; ++r) {
    const uint8_t* row = rows.data() + 210 * r;
    for (int span = 0; span < 6; ++span)
      for (int i = 0; i < 32; ++i)
        ASSERT_EQ(group[256 * span + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[32 * span + i])
            << "row " << r << " span " << span << " byte " << i;
    for (int j = 0; j < 16; ++j)
      EXPECT_EQ(group[quant::kQ6_KScales + 8 * j + slot_of_row[r]], row[192 + j]) << "scale " << j << " of row " << r;
    EXPECT_EQ(std::memcmp(group.data() + quant::kQ6_KSteps + 2 * r, row + 208, 2), 0) << "d of row " << r;
  }
  EXPECT_EQ(quant::kQ6_KSteps + 16, 8 * 210) << "the group keeps its rows' bytes";
  quant::deinterleave8_block(DType::Q6_K, group.data(), back.data());
  EXPECT_EQ(back, rows);
}

// Q3_K's interleaved layout (quant.hpp): qs's 2 spans and hmask's one in the quants' chunks, the
// 12 packed scale bytes of each row word by word in slot order, the steps per row; deinterleaving
// gives the rows back. Rows of different super-blocks of a test row.
TEST(Quant, InterleavedQ3_KBlocksFollowTheLayoutAndRoundTrip) {
  const int slot_of_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  const int64_t cols = 2048;
  std::vector<uint8_t> whole(dtype_row_bytes(DType::Q3_K, cols)), rows(8 * 110), group(8 * 110), back(8 * 110);
  quant::quantize_row(DType::Q3_K, test_row(cols, 61).data(), cols, whole.data());
  for (int r = 0; r < 8; ++r) std::memcpy(rows.data() + 110 * r, whole.data() + 110 * r, 110);
  quant::interleave8_block(DType::Q3_K, rows.data(), 110, group.data());
  for (int r = 0; r < 8; ++r) {
    const uint8_t* row = rows.data() + 110 * r;
    for (int i = 0; i < 32; ++i) {
      for (int span = 0; span < 2; ++span)
        ASSERT_EQ(group[256 * span + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[32 + 32 * span + i])
            << "qs of row " << r << " span " << span << " byte " << i;
      ASSERT_EQ(group[quant::kQ3_KHighBits + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[i]) << "hmask of row " << r;
    }
    for (int b = 0; b < 12; ++b)
      EXPECT_EQ(group[quant::kQ3_KScales + 32 * (b / 4) + 4 * slot_of_row[r] + b % 4], row[96 + b]) << "scale byte " << b;
    EXPECT_EQ(std::memcmp(group.data() + quant::kQ3_KSteps + 2 * r, row + 108, 2), 0) << "d of row " << r;
  }
  EXPECT_EQ(quant::kQ3_KSteps + 16, 8 * 110) << "the group keeps its rows' bytes";
  quant::deinterleave8_block(DType::Q3_K, group.data(), back.data());
  EXPECT_EQ(back, rows);
}

// Q2_K's interleaved layout (quant.hpp): qs's 2 spans in the quants' chunks, the scale bytes per
// sub-block in slot order, d and dmin per row; deinterleaving gives the rows back.
TEST(Quant, InterleavedQ2_KBlocksFollowTheLayoutAndRoundTrip) {
  const int slot_of_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  const int64_t cols = 2048;
  std::vector<uint8_t> whole(dtype_row_bytes(DType::Q2_K, cols)), rows(8 * 84), group(8 * 84), back(8 * 84);
  quant::quantize_row(DType::Q2_K, test_row(cols, 62).data(), cols, whole.data());
  for (int r = 0; r < 8; ++r) std::memcpy(rows.data() + 84 * r, whole.data() + 84 * r, 84);
  quant::interleave8_block(DType::Q2_K, rows.data(), 84, group.data());
  for (int r = 0; r < 8; ++r) {
    const uint8_t* row = rows.data() + 84 * r;
    for (int span = 0; span < 2; ++span)
      for (int i = 0; i < 32; ++i)
        ASSERT_EQ(group[256 * span + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[16 + 32 * span + i])
            << "qs of row " << r << " span " << span << " byte " << i;
    for (int j = 0; j < 16; ++j)
      EXPECT_EQ(group[quant::kQ2_KScales + 8 * j + slot_of_row[r]], row[j]) << "scale byte " << j << " of row " << r;
    EXPECT_EQ(std::memcmp(group.data() + quant::kQ2_KSteps + 2 * r, row + 80, 2), 0) << "d of row " << r;
    EXPECT_EQ(std::memcmp(group.data() + quant::kQ2_KMinSteps + 2 * r, row + 82, 2), 0) << "dmin of row " << r;
  }
  EXPECT_EQ(quant::kQ2_KMinSteps + 16, 8 * 84) << "the group keeps its rows' bytes";
  quant::deinterleave8_block(DType::Q2_K, group.data(), back.data());
  EXPECT_EQ(back, rows);
}

// IQ4_XS's interleaved group: the 8 rows' d, scales_h and scales_l in row order, then per
// sub-block j Q4_0's 2 chunks of the rows' 16 bytes of nibbles (byte i of row r's run j at
// 64 (i / 8) + 8 slot + i % 8); deinterleaving gives the rows back.
TEST(Quant, InterleavedIq4XsBlocksFollowTheLayoutAndRoundTrip) {
  const int slot_of_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  std::vector<uint8_t> rows(8 * 136), group(8 * 136), back(8 * 136);
  std::vector<uint8_t> whole(dtype_row_bytes(DType::IQ4_XS, 1024));
  for (int r = 0; r < 8; ++r) {  // super-block r % 4 of a test row: zeros, tiny and large values among them
    quant::quantize_row(DType::IQ4_XS, test_row(1024, 60 + r).data(), 1024, whole.data());
    std::memcpy(rows.data() + 136 * r, whole.data() + 136 * (r % 4), 136);
  }
  quant::interleave8_block(DType::IQ4_XS, rows.data(), 136, group.data());
  for (int r = 0; r < 8; ++r) {
    const uint8_t* row = rows.data() + 136 * r;
    EXPECT_EQ(std::memcmp(group.data() + 2 * r, row, 2), 0) << "d of row " << r;
    EXPECT_EQ(std::memcmp(group.data() + quant::kIq4XsHighScales + 2 * r, row + 2, 2), 0) << "scales_h of row " << r;
    EXPECT_EQ(std::memcmp(group.data() + quant::kIq4XsLowScales + 4 * r, row + 4, 4), 0) << "scales_l of row " << r;
    for (int j = 0; j < 8; ++j)
      for (int i = 0; i < 16; ++i)
        ASSERT_EQ(group[quant::kIq4XsNibbles + 128 * j + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[8 + 16 * j + i])
            << "row " << r << " sub-block " << j << " byte " << i;
  }
  EXPECT_EQ(quant::kIq4XsNibbles + 8 * 128, 8 * 136) << "the group keeps its rows' bytes";
  quant::deinterleave8_block(DType::IQ4_XS, group.data(), back.data());
  EXPECT_EQ(back, rows);
}

// The interleaved layout (quant.hpp): every byte of 8 rows' blocks lands where the description
// says, checked field by field against the rows, and deinterleaving gives the rows back.
TEST(Quant, InterleavedBlocksFollowTheLayoutAndRoundTrip) {
  const int slot_of_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};  // rows 0, 1, 4, 5 first, then 2, 3, 6, 7
  for (DType type : {DType::Q8_0, DType::Q4_0, DType::Q5_0, DType::Q4_1, DType::Q5_1, DType::IQ4_NL, DType::MXFP4, DType::Q4_K, DType::Q5_K}) {
    const bool small = type == DType::Q8_0 || quant::is_nibble_block(type);
    const int64_t n = small ? 32 : 256;
    const size_t block = dtype_row_bytes(type, n);
    std::vector<uint8_t> rows(8 * block), group(8 * block), back(8 * block);
    // Row r's block: block r (the 32-value types) or r % 4 (Q4_K, Q5_K) of a test row, so the group holds zero,
    // positive, tiny and large blocks.
    const int64_t cols = 1024;
    std::vector<uint8_t> whole(dtype_row_bytes(type, cols));
    for (int r = 0; r < 8; ++r) {
      quant::quantize_row(type, test_row(cols, 40 + r).data(), cols, whole.data());
      std::memcpy(rows.data() + r * block, whole.data() + (r % (cols / n)) * block, block);
    }
    quant::interleave8_block(type, rows.data(), block, group.data());
    for (int r = 0; r < 8; ++r) {
      const uint8_t* row = rows.data() + r * block;
      const int scale = quant::small_block_scale_bytes(type);  // MXFP4's e: 1 byte
      EXPECT_EQ(std::memcmp(group.data() + scale * r, row, scale), 0) << "d of row " << r;
      // The quants: 32 bytes per row and span (Q8_0's q, Q4_0's 16 bytes of nibbles; Q4_K's and
      // Q5_K's 4 pairs of sub-blocks of low nibbles, which a Q5_K row holds after its 32 bytes of
      // qh; then Q5_K's qh).
      const size_t quants = small ? 16 : 128, row_quants = small ? 2 : type == DType::Q5_K ? 48 : 16;
      if (quant::has_block_min(type)) EXPECT_EQ(std::memcmp(group.data() + 16 + 2 * r, row + 2, 2), 0) << "m of row " << r;
      for (int span = 0; span < (small ? 1 : 4) && (type == DType::Q8_0 || !quant::is_nibble_block(type)); ++span)
        for (int i = 0; i < (type == DType::Q4_0 ? 16 : 32); ++i)
          ASSERT_EQ(group[quants + 256 * span + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[row_quants + 32 * span + i])
              << dtype_name(type) << " row " << r << " span " << span << " byte " << i;
      if (type == DType::Q5_K)
        for (int i = 0; i < 32; ++i)
          ASSERT_EQ(group[quant::kQ5_KHighBits + 64 * (i / 8) + 8 * slot_of_row[r] + i % 8], row[16 + i])
              << "qh byte " << i << " of row " << r;
      if (quant::is_nibble_block(type)) {
        // Chunk k's low nibbles are Q8_0's chunk k of the row's values (0..15), its high nibbles
        // chunk k + 2 (values 16..31): value i of row r's q at byte 8 slot + i % 8 of chunk
        // i / 8 % 2; Q5_0's / Q5_1's top bit of it is bit i % 8 of byte slot of word i / 8. The
        // values: q - 8 (Q4_0), q - 16 (Q5_0), q (Q4_1, Q5_1), the table's (IQ4_NL).
        const bool q5 = quant::has_fifth_bit(type);
        int8_t values[32];
        if (type == DType::Q4_0) quant::small_block_values<DType::Q4_0>(row, values);
        if (type == DType::Q5_0) quant::small_block_values<DType::Q5_0>(row, values);
        if (type == DType::Q4_1) quant::small_block_values<DType::Q4_1>(row, values);
        if (type == DType::Q5_1) quant::small_block_values<DType::Q5_1>(row, values);
        if (type == DType::IQ4_NL) quant::small_block_values<DType::IQ4_NL>(row, values);
        if (type == DType::MXFP4) quant::small_block_values<DType::MXFP4>(row, values);
        const int bias = type == DType::Q4_0 ? 8 : type == DType::Q5_0 ? 16 : 0;
        const uint8_t* nibbles = group.data() + quant::small_group_nibbles(type);
        for (int i = 0; i < 32; ++i) {
          const uint8_t b = nibbles[64 * (i / 8 % 2) + 8 * slot_of_row[r] + i % 8];
          const int top = q5 ? (group[quant::small_group_high_bits(type) + 8 * (i / 8) + slot_of_row[r]] >> (i % 8)) & 1 : 0;
          const int q = (i < 16 ? b & 15 : b >> 4) + 16 * top;
          ASSERT_EQ(type == DType::IQ4_NL ? quant::kIq4NlValues[q] : type == DType::MXFP4 ? quant::kMxfp4Values[q] : q - bias, values[i])
              << dtype_name(type) << " value " << i << " of row " << r;
        }
      }
      if (small) continue;
      EXPECT_EQ(std::memcmp(group.data() + 16 + 2 * r, row + 2, 2), 0) << "dmin of row " << r;
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        quant::q4_k_scale_min(row + 4, j, &sc, &m);
        uint8_t unit[12];  // unit j, stored word by word
        for (int w = 0; w < 3; ++w) std::memcpy(unit + 4 * w, group.data() + 32 + 32 * w + 4 * j, 4);
        int unit_sc, other;
        quant::q4_k_scale_min(unit, slot_of_row[r], &unit_sc, &other);
        EXPECT_EQ(unit_sc, sc) << "scale of sub-block " << j << " of row " << r;
        // m[j] of row r: unit 2 (j / 2) + r / 4, min slot 2 (r % 4) + j % 2.
        for (int w = 0; w < 3; ++w) std::memcpy(unit + 4 * w, group.data() + 32 + 32 * w + 4 * (2 * (j / 2) + r / 4), 4);
        int unit_min;
        quant::q4_k_scale_min(unit, 2 * (r % 4) + j % 2, &other, &unit_min);
        EXPECT_EQ(unit_min, m) << "min of sub-block " << j << " of row " << r;
      }
    }
    quant::deinterleave8_block(type, group.data(), back.data());
    EXPECT_EQ(back, rows) << dtype_name(type);
  }
  EXPECT_EQ(quant::kQ5_KHighBits + 256, 8 * 176) << "a Q5_K group keeps its rows' bytes";
  EXPECT_EQ(16 + 2 * 64, 8 * 18) << "a Q4_0 group: 8 fp16 steps and 2 chunks, its rows' bytes";
  EXPECT_EQ(quant::small_group_nibbles(DType::Q5_0) + 2 * 64, 8 * 22) << "a Q5_0 group: 8 fp16 steps, 4 words of top bits, 2 chunks";
  EXPECT_EQ(quant::small_group_nibbles(DType::Q4_1) + 2 * 64, 8 * 20) << "a Q4_1 group: 8 steps d, 8 m, 2 chunks";
  EXPECT_EQ(quant::small_group_nibbles(DType::Q5_1) + 2 * 64, 8 * 24) << "a Q5_1 group: 8 d, 8 m, 4 words of top bits, 2 chunks";
}
