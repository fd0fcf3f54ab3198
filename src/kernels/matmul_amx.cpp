// AMX (Intel's tile unit, Sapphire Rapids and later): the quantized products of prefill (Q8_0,
// Q4_0, Q5_0, IQ4_NL, MXFP4, IQ4_XS, Q4_K, Q5_K and Q6_K weights against many tokens) with AMX-INT8's tile dot
// products, and every product with a bf16 matrix in the tile unit's order (Bf16Tiles, any token
// count) with AMX-BF16's (below, bf16_tile_matmul_rows); everything else, and every quantized product of fewer than
// kAmxMinTokens tokens, is the AVX-512 VNNI table's. Compiled with the
// AVX-512, VNNI and AMX flags; dispatch.cpp gives this table only to CPUs that have AMX-TILE and
// AMX-INT8 and whose kernel lets the process use the tile data (arch_prctl XCOMP_PERM).
//
// The quantized products give the same bits as every other ISA (quant_matmul_impl.hpp's contract): a tile dot product sums int8 x
// int8 (TDPBSSD: Q8_0, and Q4_0 / Q5_0 / IQ4_NL / MXFP4 / IQ4_XS / Q6_K unpacked to their int8 values q - 8 / q - 16 /
// the table's / q - 32) or int8 x uint8 (TDPBSUD: Q4_K's nibbles, Q5_K's with their top bits) products in int32,
// exactly, so a tile whose K is one block of 32 columns (Q6_K: one sub-block of 16) gives each
// (token, row) that block's integer sum, the same integer the other lanes compute. The float steps
// after it are the other lanes' operations in their order: per block (Q8_0, Q4_0, Q5_0, IQ4_NL, MXFP4: d its step; IQ4_XS's sub-blocks)
// acc = fma(float(sum), d * a.d, acc); per super-block (Q4_K, Q5_K)
// acc = fma(float(sum_j sc[j] * sum_j), d * a.d, acc), then acc = fma(-float(sum_j m[j] * a_j.sum),
// dmin * a.d, acc) (Q6_K: the first step only), the sub-blocks' scales applied in integers. So a token gets the same bits in this path, in the VNNI lane (fewer tokens, the rows
// outside this path) and in the portable code.
//
// Layout: C tiles are [16 tokens][16 rows] of int32, so a row of C is one token's 16 outputs as one
// zmm (the float steps run 16 rows per instruction and store straight into y). A tiles are the
// activation bytes [16 tokens][32 columns], read in place from the ActivationBlocks (stride: a
// token's blocks). B tiles are the weights [8 column quads][16 rows x 4 bytes]: TDPB*D takes B in
// this "VNNI" order, so each call repacks its rows' weights once, 16 rows (two interleaved groups of
// util/quant.hpp) at a time, then runs every token through them.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/quant_lane_avx512_vnni.hpp"
#include "util/quant.hpp"

namespace crossmoe::kernels {

namespace {

// Fewer tokens than a full tile run on the VNNI lane (the same bits): a TDPBSSD costs the same
// with 1 or 16 token rows of A, and each call repacks its weights whatever the token count, while
// the VNNI lane reads the interleaved weights as they lie, 4 tokens per pass. Per 16 rows x 32
// columns, 16 tokens cost the VNNI lane 128 vpdpbusd (64 products each); AMX does them in one
// TDPBSSD plus 8 permutes of repacking, with the same 16 zmm of float steps in both. So from one
// full tile on, AMX's integer work is a small part of the lane's, and below it the tile is mostly
// empty (a call of 16..31 tokens already recomputes the overlap of its last tile). Decode (1 token)
// streams weights from memory, where both lanes wait on memory alike. Measured at exactly 16
// tokens (one core of a Sapphire Rapids class Xeon, bench_matvec 4096 4096
// avx512_vnni,amx,avx512_vnni,amx 16): 1.6-3.4x the VNNI lane on Q8_0, 1.2-1.9x on Q4_K; with half
// as many tokens the tile's cost stays and the lane's halves, so 16 is where it is clearly ahead.
constexpr int kAmxMinTokens = 16;
constexpr int kTileTokens = 16, kStripRows = 16;

// LDTILECFG's 64 bytes, palette 1. Tiles 0, 1: C, int32 sums [16 tokens][16 rows]; 2, 3: A,
// activation bytes [16 tokens][K columns]; 4, 5: B, weight bytes [K / 4 quads of columns][16 rows
// x 4]. K is 32, a block, or 16, a Q6_K sub-block. Each product uses tiles (0, 2, 4) or (1, 3, 5),
// so two blocks are in flight at once.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);
constexpr TileConfig tile_config(int k) {
  TileConfig c;
  for (int p = 0; p < 2; ++p) {
    c.colsb[p] = 64, c.rows[p] = kTileTokens;
    c.colsb[2 + p] = uint16_t(k), c.rows[2 + p] = kTileTokens;
    c.colsb[4 + p] = 64, c.rows[4 + p] = uint8_t(k / 4);
  }
  return c;
}
alignas(64) constexpr TileConfig kBlockTiles = tile_config(32), kSubBlockTiles = tile_config(16);

// The tile instructions. Their tile operands are immediates (the intrinsics paste the number into
// the instruction), hence one branch per tile set P. GCC's LDTILECFG and TILELOADD are asm
// statements that do not tell the compiler which memory they read (TILESTORED clobbers all of it),
// so a compiler barrier before each makes the stores before it (the packed weights) land first.
struct AmxTiles {
  static void barrier() { asm volatile("" ::: "memory"); }
  static void begin(const TileConfig& config) {
    barrier();
    _tile_loadconfig(&config);
  }
  static void end() { _tile_release(); }
  template <int P>
  static void load_a(const void* p, int64_t stride) {
    barrier();
    if constexpr (P == 0) _tile_loadd(2, p, stride);
    else _tile_loadd(3, p, stride);
  }
  template <int P>
  static void load_b(const void* p, int64_t stride) {
    barrier();
    if constexpr (P == 0) _tile_loadd(4, p, stride);
    else _tile_loadd(5, p, stride);
  }
  // C = A . B, signed bytes times signed (Q8_0) or unsigned (Q4_K nibbles) bytes.
  template <int P, bool kUnsignedB>
  static void dot() {
    if constexpr (P == 0) {
      _tile_zero(0);
      if constexpr (kUnsignedB) _tile_dpbsud(0, 2, 4);
      else _tile_dpbssd(0, 2, 4);
    } else {
      _tile_zero(1);
      if constexpr (kUnsignedB) _tile_dpbsud(1, 3, 5);
      else _tile_dpbssd(1, 3, 5);
    }
  }
  template <int P>
  static void store_c(void* p, int64_t stride) {
    if constexpr (P == 0) _tile_stored(0, p, stride);
    else _tile_stored(1, p, stride);
  }
  // The bf16 products' tiles by number (GCC's tile intrinsics paste their tile operands into the
  // instruction's text: each number is spelled out). A 4, B 5 and 6, C 0..3.
  template <int T>
  static void tile_load(const void* p, int64_t stride) {
    barrier();
    static_assert(T >= 4 && T <= 6);
    if constexpr (T == 4) _tile_loadd(4, p, stride);
    else if constexpr (T == 5) _tile_loadd(5, p, stride);
    else _tile_loadd(6, p, stride);
  }
  template <int T>
  static void tile_zero() {
    static_assert(T >= 0 && T <= 3);
    if constexpr (T == 0) _tile_zero(0);
    else if constexpr (T == 1) _tile_zero(1);
    else if constexpr (T == 2) _tile_zero(2);
    else _tile_zero(3);
  }
  template <int T>
  static void tile_store(void* p, int64_t stride) {
    static_assert(T >= 0 && T <= 3);
    if constexpr (T == 0) _tile_stored(0, p, stride);
    else if constexpr (T == 1) _tile_stored(1, p, stride);
    else if constexpr (T == 2) _tile_stored(2, p, stride);
    else _tile_stored(3, p, stride);
  }
  // C += A . B over bf16 pairs (TDPBF16PS), A tile 4.
  template <int C, int A, int B>
  static void dot_bf16() {
    static_assert(A == 4 && (B == 5 || B == 6) && C >= 0 && C <= 3);
    if constexpr (B == 5) {
      if constexpr (C == 0) _tile_dpbf16ps(0, 4, 5);
      else if constexpr (C == 1) _tile_dpbf16ps(1, 4, 5);
      else if constexpr (C == 2) _tile_dpbf16ps(2, 4, 5);
      else _tile_dpbf16ps(3, 4, 5);
    } else {
      if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
      else if constexpr (C == 1) _tile_dpbf16ps(1, 4, 6);
      else if constexpr (C == 2) _tile_dpbf16ps(2, 4, 6);
      else _tile_dpbf16ps(3, 4, 6);
    }
  }
};

// The same operations on a scalar model of the tile unit (the SDM's TILELOADD, TILEZERO,
// TDPBSSD / TDPBSUD and TILESTORED on tiles as configured), so that the layout and float steps
// above are tested on CPUs without AMX (amx_emulated_kernels).
struct EmulatedTiles {
  struct Unit {
    uint8_t rows[8];
    uint16_t colsb[8];
    uint8_t data[8][16][64];
  };
  static Unit& unit() {
    thread_local Unit u;
    return u;
  }
  static void begin(const TileConfig& c) {
    Unit& u = unit();
    for (int t = 0; t < 8; ++t) u.rows[t] = c.rows[t], u.colsb[t] = c.colsb[t];
    std::memset(u.data, 0, sizeof u.data);
  }
  static void end() {}
  static void load(int t, const void* p, int64_t stride) {
    Unit& u = unit();
    for (int r = 0; r < u.rows[t]; ++r) std::memcpy(u.data[t][r], static_cast<const uint8_t*>(p) + r * stride, u.colsb[t]);
  }
  template <int P>
  static void load_a(const void* p, int64_t stride) { load(2 + P, p, stride); }
  template <int P>
  static void load_b(const void* p, int64_t stride) { load(4 + P, p, stride); }
  template <int P, bool kUnsignedB>
  static void dot() {
    Unit& u = unit();
    const int c = P, a = 2 + P, b = 4 + P;
    for (int m = 0; m < u.rows[c]; ++m)
      for (int n = 0; n < u.colsb[c] / 4; ++n) {
        int32_t sum = 0;  // TILEZERO, then C[m][n] += sum over k, i of A[m][4k + i] * B[k][4n + i]
        for (int k = 0; k < u.colsb[a] / 4; ++k)
          for (int i = 0; i < 4; ++i) {
            const uint8_t w = u.data[b][k][4 * n + i];
            sum += int32_t(int8_t(u.data[a][m][4 * k + i])) * (kUnsignedB ? int32_t(w) : int32_t(int8_t(w)));
          }
        std::memcpy(&u.data[c][m][4 * n], &sum, 4);
      }
  }
  template <int P>
  static void store_c(void* p, int64_t stride) {
    Unit& u = unit();
    for (int r = 0; r < u.rows[P]; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, u.data[P][r], u.colsb[P]);
  }
  template <int T>
  static void tile_load(const void* p, int64_t stride) { load(T, p, stride); }
  template <int T>
  static void tile_zero() { std::memset(unit().data[T], 0, sizeof unit().data[T]); }
  template <int T>
  static void tile_store(void* p, int64_t stride) { store_c<T>(p, stride); }
  // TDPBF16PS as the SDM writes it: C[m][n] += A[m][2k] * B[k][2n], then += A[m][2k + 1] * B[k][2n + 1],
  // for k in order, each product exact in f32 and each sum rounded. The hardware sums in an order and
  // width of its own (on a Sapphire Rapids class Xeon no such sequence of pairs or groups matched its
  // bits), so this models the layout and the size of the errors, not the tile unit's last bits.
  template <int C, int A, int B>
  static void dot_bf16() {
    Unit& u = unit();
    const auto bf16 = [&](int t, int row, int element) {
      uint16_t h;
      std::memcpy(&h, &u.data[t][row][2 * element], 2);
      return bf16_to_f32(h);
    };
    for (int m = 0; m < u.rows[C]; ++m)
      for (int n = 0; n < u.colsb[C] / 4; ++n) {
        float sum;
        std::memcpy(&sum, &u.data[C][m][4 * n], 4);
        for (int k = 0; k < u.colsb[A] / 4; ++k)
          for (int i = 0; i < 2; ++i) sum += bf16(A, m, 2 * k + i) * bf16(B, k, 2 * n + i);
        std::memcpy(&u.data[C][m][4 * n], &sum, 4);
      }
  }
};

// B's order from an interleaved chunk (util/quant.hpp: 8 bytes of each of 8 rows, row n in slot
// kSlot[n]) of two groups: quad 2k of the block (its columns 8k..8k+3) is the chunk's dword
// 2 * slot, quad 2k + 1 the next dword; rows 0..7 from the first group, 8..15 from the second.
__m512i quad_index(int odd) {
  constexpr int kSlot[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  alignas(64) int32_t index[16];
  for (int n = 0; n < 8; ++n) index[n] = 2 * kSlot[n] + odd, index[8 + n] = 16 + 2 * kSlot[n] + odd;
  return _mm512_load_si512(index);
}

// (The conversions in their zero-masking forms with every lane set: GCC 12's plain intrinsics
// start from an "undefined" vector that -Wmaybe-uninitialized reports; the instructions are the same.)
constexpr __mmask16 kAll = 0xffff;

// Two groups' fp16 fields (8 each, at a and b) as 16 floats.
__m512 halves16(const uint8_t* a, const uint8_t* b) {
  alignas(32) uint16_t h[16];
  std::memcpy(h, a, 16);
  std::memcpy(h + 8, b, 16);
  return _mm512_maskz_cvtph_ps(kAll, _mm256_load_si256(reinterpret_cast<const __m256i*>(h)));
}

// int32 to float, rounded to nearest (vcvtdq2ps, as float(int) in the other lanes).
__m512 to_float(__m512i v) { return _mm512_maskz_cvtepi32_ps(kAll, v); }

// One block of a strip of 16 rows, as the tiles read it.
struct alignas(64) Q8Strip {
  float d[16];
  int8_t b[8][64];
};

// Q8_0's chunk k of a strip's block as int8 values (lo: the first group's 8 rows, hi: the second's)
// into B's order.
void store_chunk(__m512i lo, __m512i hi, int k, Q8Strip& out) {
  static const __m512i even = quad_index(0), odd = quad_index(1);
  _mm512_store_si512(out.b[2 * k], _mm512_permutex2var_epi32(lo, even, hi));
  _mm512_store_si512(out.b[2 * k + 1], _mm512_permutex2var_epi32(lo, odd, hi));
}

// Q8_0's, Q4_0's, Q5_0's, IQ4_NL's or MXFP4's groups (util/quant.hpp): each block's values as int8, the VNNI lane's
// unpacking of a group's chunk k (Q8_0's chunk k, each value + its bias) less the bias.
template <DType kType>
void pack_small_blocks(const uint8_t* g0, const uint8_t* g1, int64_t blocks, Q8Strip* out) {
  using Lane = QuantLaneAvx512Vnni;
  constexpr size_t kGroupBytes = Lane::small_group_bytes<kType>;
  const __m512i bias = _mm512_set1_epi8(char(Lane::small_block_bias<kType>));
  for (int64_t b = 0; b < blocks; ++b, g0 += kGroupBytes, g1 += kGroupBytes) {
    _mm256_store_ps(out[b].d, Lane::small_group_steps<kType>(g0));
    _mm256_store_ps(out[b].d + 8, Lane::small_group_steps<kType>(g1));
    for (int k = 0; k < 4; ++k)
      store_chunk(_mm512_sub_epi8(Lane::small_group_values<kType>(g0, k), bias),
                  _mm512_sub_epi8(Lane::small_group_values<kType>(g1, k), bias), k, out[b]);
  }
}

// IQ4_XS's groups: each sub-block a block of IQ4_NL values (the VNNI lane's lookup, less its bias)
// whose d is the sub-block's step float(d * (ls - 32)) (QuantLaneAvx2::iq4_xs_steps), so that
// q8_0_tile takes its float steps as the other lanes do.
void pack_iq4_xs(const uint8_t* g0, const uint8_t* g1, int64_t super_blocks, Q8Strip* out) {
  using Lane = QuantLaneAvx512Vnni;
  constexpr size_t kGroupBytes = 8 * 136;
  const __m512i bias = _mm512_set1_epi8(char(0x80)), table = Lane::iq4_nl_biased_values();
  for (int64_t s = 0; s < super_blocks; ++s, g0 += kGroupBytes, g1 += kGroupBytes) {
    __m256 steps0[8], steps1[8];
    Lane::iq4_xs_steps(g0, steps0);
    Lane::iq4_xs_steps(g1, steps1);
    for (int j = 0; j < 8; ++j) {
      Q8Strip& o = out[8 * s + j];
      _mm256_store_ps(o.d, steps0[j]);
      _mm256_store_ps(o.d + 8, steps1[j]);
      const uint8_t* q0 = g0 + quant::kIq4XsNibbles + 128 * j;
      const uint8_t* q1 = g1 + quant::kIq4XsNibbles + 128 * j;
      for (int k = 0; k < 4; ++k)
        store_chunk(_mm512_sub_epi8(_mm512_shuffle_epi8(table, Lane::chunk_nibbles(q0, k)), bias),
                    _mm512_sub_epi8(_mm512_shuffle_epi8(table, Lane::chunk_nibbles(q1, k)), bias), k, o);
    }
  }
}

// One super-block of a strip of 16 rows: steps, sub-block scales and mins per row (mins in pairs
// (m[2q], m[2q + 1]) of 16-bit halves, against two blocks' sums in one vpmaddwd), and each
// sub-block's nibbles as a B tile.
struct alignas(64) Q4Strip {
  float d[16], dmin[16];
  int32_t scales[8][16];
  int32_t min_pairs[4][16];
  uint8_t b[8][8][64];
};

// Q4_K's groups, or Q5_K's (Q4_K's bytes, then the qh span: each nibble's top bit, as the VNNI
// lane's with_high_bit adds it).
template <DType kType>
void pack_q4_k(const uint8_t* g0, const uint8_t* g1, int64_t super_blocks, Q4Strip* out) {
  constexpr int kSlot[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  constexpr size_t kGroupBytes = kType == DType::Q4_K ? 8 * 144 : 8 * 176;
  const __m512i even = quad_index(0), odd = quad_index(1), low4 = _mm512_set1_epi8(15);
  for (int64_t s = 0; s < super_blocks; ++s, g0 += kGroupBytes, g1 += kGroupBytes) {
    Q4Strip& o = out[s];
    _mm512_store_ps(o.d, halves16(g0, g1));
    _mm512_store_ps(o.dmin, halves16(g0 + 16, g1 + 16));
    // The 96 bytes hold 8 units of 12 bytes word by word; unit u's scales are sc[u] of the rows in
    // slot order, its mins m[2 (u / 2) + s % 2] of row 4 (u % 2) + s / 2 (util/quant.hpp).
    uint8_t mins[16][8];
    for (int h = 0; h < 2; ++h) {
      const uint8_t* g = h ? g1 : g0;
      for (int u = 0; u < 8; ++u) {
        uint8_t unit[12], unit_scales[8], unit_mins[8];
        for (int w = 0; w < 3; ++w) std::memcpy(unit + 4 * w, g + 32 + 32 * w + 4 * u, 4);
        quant::q4_k_scales_mins(unit, unit_scales, unit_mins);
        for (int slot = 0; slot < 8; ++slot) {
          o.scales[u][8 * h + kSlot[slot]] = unit_scales[slot];
          mins[8 * h + 4 * (u % 2) + slot / 2][2 * (u / 2) + slot % 2] = unit_mins[slot];
        }
      }
    }
    for (int q = 0; q < 4; ++q)
      for (int n = 0; n < 16; ++n) o.min_pairs[q][n] = int32_t(mins[n][2 * q]) | int32_t(mins[n][2 * q + 1]) << 16;
    for (int p = 0; p < 4; ++p)
      for (int k = 0; k < 4; ++k) {
        __m512i low[2], high[2];  // sub-blocks 2p and 2p + 1 of each group
        for (int h = 0; h < 2; ++h) {
          const uint8_t* g = h ? g1 : g0;
          const __m512i raw = _mm512_loadu_si512(g + 128 + 256 * p + 64 * k);
          low[h] = _mm512_and_si512(raw, low4);
          high[h] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
          if constexpr (kType == DType::Q5_K) {
            low[h] = QuantLaneAvx512Vnni::with_high_bit(low[h], g + quant::kQ5_KHighBits + 64 * k, 2 * p);
            high[h] = QuantLaneAvx512Vnni::with_high_bit(high[h], g + quant::kQ5_KHighBits + 64 * k, 2 * p + 1);
          }
        }
        _mm512_store_si512(o.b[2 * p][2 * k], _mm512_permutex2var_epi32(low[0], even, low[1]));
        _mm512_store_si512(o.b[2 * p][2 * k + 1], _mm512_permutex2var_epi32(low[0], odd, low[1]));
        _mm512_store_si512(o.b[2 * p + 1][2 * k], _mm512_permutex2var_epi32(high[0], even, high[1]));
        _mm512_store_si512(o.b[2 * p + 1][2 * k + 1], _mm512_permutex2var_epi32(high[0], odd, high[1]));
      }
  }
}

// One super-block of a strip of 16 rows of Q6_K: steps, each sub-block's int8 scales per row, and
// each sub-block's values q - 32 (the VNNI lane's q6_k_values, less 32) as a B tile of 4 quads.
struct alignas(64) Q6Strip {
  float d[16];
  int32_t scales[16][16];
  int8_t b[16][4][64];
};

void pack_q6_k(const uint8_t* g0, const uint8_t* g1, int64_t super_blocks, Q6Strip* out) {
  constexpr int kSlot[8] = {0, 1, 4, 5, 2, 3, 6, 7};
  constexpr size_t kGroupBytes = 8 * 210;
  const __m512i even = quad_index(0), odd = quad_index(1), offset = _mm512_set1_epi8(32);
  for (int64_t s = 0; s < super_blocks; ++s, g0 += kGroupBytes, g1 += kGroupBytes) {
    Q6Strip& o = out[s];
    _mm512_store_ps(o.d, halves16(g0 + quant::kQ6_KSteps, g1 + quant::kQ6_KSteps));
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 16; ++j)
        for (int slot = 0; slot < 8; ++slot)
          o.scales[j][8 * h + kSlot[slot]] = int8_t((h ? g1 : g0)[quant::kQ6_KScales + 8 * j + slot]);
    for (int b = 0; b < 8; ++b)
      for (int k = 0; k < 4; ++k) {  // chunk k: values 8k..8k+7 of block b, sub-block 2b + k / 2
        const __m512i lo = _mm512_sub_epi8(QuantLaneAvx512Vnni::q6_k_values(g0, b / 4, b % 4, k), offset);
        const __m512i hi = _mm512_sub_epi8(QuantLaneAvx512Vnni::q6_k_values(g1, b / 4, b % 4, k), offset);
        int8_t (*quads)[64] = o.b[2 * b + k / 2] + 2 * (k % 2);
        _mm512_store_si512(quads[0], _mm512_permutex2var_epi32(lo, even, hi));
        _mm512_store_si512(quads[1], _mm512_permutex2var_epi32(lo, odd, hi));
      }
  }
}

// 16 tokens (x: the first one's blocks, a token's blocks apart) times a strip of 16 rows:
// y[i * ldy + n] for token i, row n.
template <class Tiles>
void q8_0_tile(const Q8Strip* w, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  const int64_t stride = blocks * int64_t(sizeof(ActivationBlock));
  __m512 acc[kTileTokens];
  for (auto& a : acc) a = _mm512_setzero_ps();
  alignas(64) int32_t sums[2][kTileTokens][16];
  const auto scale = [&](int64_t b, const int32_t (*s)[16]) {
    const __m512 d = _mm512_load_ps(w[b].d);
    for (int i = 0; i < kTileTokens; ++i)
      acc[i] = _mm512_fmadd_ps(to_float(_mm512_load_si512(s[i])),
                               _mm512_mul_ps(d, _mm512_set1_ps(x[i * blocks + b].d)), acc[i]);
  };
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    Tiles::template load_a<0>(x[b].q, stride);
    Tiles::template load_b<0>(w[b].b, 64);
    Tiles::template dot<0, false>();
    Tiles::template load_a<1>(x[b + 1].q, stride);
    Tiles::template load_b<1>(w[b + 1].b, 64);
    Tiles::template dot<1, false>();
    Tiles::template store_c<0>(sums[0], 64);
    Tiles::template store_c<1>(sums[1], 64);
    scale(b, sums[0]);
    scale(b + 1, sums[1]);
  }
  if (b < blocks) {
    Tiles::template load_a<0>(x[b].q, stride);
    Tiles::template load_b<0>(w[b].b, 64);
    Tiles::template dot<0, false>();
    Tiles::template store_c<0>(sums[0], 64);
    scale(b, sums[0]);
  }
  for (int i = 0; i < kTileTokens; ++i) _mm512_storeu_ps(y + i * ldy, acc[i]);
}

// Token i's sum_j sc[j] * sums[j][i] over a strip's kSubBlocks sub-blocks, per row, in int32
// (exact within the callers' bounds).
template <int kSubBlocks>
__m512i scaled_sums(const int32_t (*sums)[kTileTokens][16], const int32_t (*scales)[16], int i) {
  __m512i dots = _mm512_mullo_epi32(_mm512_load_si512(sums[0][i]), _mm512_load_si512(scales[0]));
  for (int j = 1; j < kSubBlocks; ++j)
    dots = _mm512_add_epi32(dots, _mm512_mullo_epi32(_mm512_load_si512(sums[j][i]), _mm512_load_si512(scales[j])));
  return dots;
}

template <class Tiles>
void q4_k_tile(const Q4Strip* w, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  const int64_t stride = blocks * int64_t(sizeof(ActivationBlock));
  __m512 acc[kTileTokens];
  for (auto& a : acc) a = _mm512_setzero_ps();
  alignas(64) int32_t sums[8][kTileTokens][16];  // per sub-block
  for (int64_t b = 0; b < blocks; b += 8) {
    const Q4Strip& s = w[b / 8];
    for (int p = 0; p < 4; ++p) {
      Tiles::template load_a<0>(x[b + 2 * p].q, stride);
      Tiles::template load_b<0>(s.b[2 * p], 64);
      Tiles::template dot<0, true>();
      Tiles::template load_a<1>(x[b + 2 * p + 1].q, stride);
      Tiles::template load_b<1>(s.b[2 * p + 1], 64);
      Tiles::template dot<1, true>();
      Tiles::template store_c<0>(sums[2 * p], 64);
      Tiles::template store_c<1>(sums[2 * p + 1], 64);
    }
    const __m512 d = _mm512_load_ps(s.d), dmin = _mm512_load_ps(s.dmin);
    for (int i = 0; i < kTileTokens; ++i) {
      const ActivationBlock* a = x + i * blocks + b;
      // |sum_j| <= 32 * 31 * 128 (Q5_K) and sc <= 63: the 8 products' sum stays below 2^26, exact in int32.
      const __m512i dots = scaled_sums<8>(sums, s.scales, i);
      __m512i min_sum = _mm512_setzero_si512();
      for (int q = 0; q < 4; ++q) {
        const int32_t pair = int32_t(uint16_t(int16_t(a[2 * q].sum))) | int32_t(uint32_t(uint16_t(int16_t(a[2 * q + 1].sum))) << 16);
        min_sum = _mm512_add_epi32(min_sum, _mm512_madd_epi16(_mm512_load_si512(s.min_pairs[q]), _mm512_set1_epi32(pair)));
      }
      const __m512 ad = _mm512_set1_ps(a->d);
      acc[i] = _mm512_fmadd_ps(to_float(dots), _mm512_mul_ps(d, ad), acc[i]);
      acc[i] = _mm512_fnmadd_ps(to_float(min_sum), _mm512_mul_ps(dmin, ad), acc[i]);
    }
  }
  for (int i = 0; i < kTileTokens; ++i) _mm512_storeu_ps(y + i * ldy, acc[i]);
}

// Q6_K's tiles have K = one sub-block of 16 columns (kSubBlockTiles): A is the first or second
// half of an activation block, B a sub-block's 4 quads.
template <class Tiles>
void q6_k_tile(const Q6Strip* w, const ActivationBlock* x, int64_t blocks, float* y, int64_t ldy) {
  const int64_t stride = blocks * int64_t(sizeof(ActivationBlock));
  __m512 acc[kTileTokens];
  for (auto& a : acc) a = _mm512_setzero_ps();
  alignas(64) int32_t sums[16][kTileTokens][16];  // per sub-block
  for (int64_t b = 0; b < blocks; b += 8) {
    const Q6Strip& s = w[b / 8];
    for (int j = 0; j < 16; j += 2) {
      Tiles::template load_a<0>(x[b + j / 2].q, stride);
      Tiles::template load_b<0>(s.b[j], 64);
      Tiles::template dot<0, false>();
      Tiles::template load_a<1>(x[b + j / 2].q + 16, stride);
      Tiles::template load_b<1>(s.b[j + 1], 64);
      Tiles::template dot<1, false>();
      Tiles::template store_c<0>(sums[j], 64);
      Tiles::template store_c<1>(sums[j + 1], 64);
    }
    const __m512 d = _mm512_load_ps(s.d);
    for (int i = 0; i < kTileTokens; ++i) {
      // |sum_j| <= 16 * 32 * 128 and |sc| <= 128: the 16 products' sum stays below 2^28, exact in int32.
      acc[i] = _mm512_fmadd_ps(to_float(scaled_sums<16>(sums, s.scales, i)), _mm512_mul_ps(d, _mm512_set1_ps(x[i * blocks + b].d)), acc[i]);
    }
  }
  for (int i = 0; i < kTileTokens; ++i) _mm512_storeu_ps(y + i * ldy, acc[i]);
}

// Rows [r0, r1) (r0 a multiple of 8, as matmul_batch's blocks of rows are): whole strips of 16
// interleaved rows on the tiles, the rest (a last group of 8, rows after the last group, matrices
// as rows) and calls of few tokens on the VNNI lane. Tokens go 16 at a time; the last tile ends at the last token and recomputes the tokens it
// shares with the one before (the same operations: the same values written again).
template <class Tiles>
void quant_matmul_rows(const Matrix& m, const ActivationBlock* x, const int16_t* sums, int tokens, float* y, int64_t r0,
                       int64_t r1) {
  // IQ4_XS's sub-blocks are IQ4_NL blocks with their own steps: the small blocks' tiles.
  const bool small_blocks = m.dtype == DType::Q8_0 || m.dtype == DType::Q4_0 || m.dtype == DType::Q5_0 ||
                            m.dtype == DType::IQ4_NL || m.dtype == DType::MXFP4 || m.dtype == DType::IQ4_XS;
  const bool super_blocks_with_mins = m.dtype == DType::Q4_K || m.dtype == DType::Q5_K;
  int64_t strip_end = r0;
  if (m.layout == Layout::Interleaved8 && (small_blocks || super_blocks_with_mins || m.dtype == DType::Q6_K) &&
      tokens >= kAmxMinTokens)
    strip_end = r0 + std::max<int64_t>(0, std::min(r1, m.rows / 8 * 8) - r0) / kStripRows * kStripRows;
  if (strip_end > r0) {
    const int64_t blocks = m.cols / 32, strips = (strip_end - r0) / kStripRows;
    const size_t row_bytes = dtype_row_bytes(m.dtype, m.cols);
    const auto* rows = static_cast<const uint8_t*>(m.data) + size_t(r0) * row_bytes;
    const auto group = [&](int64_t s, int h) { return rows + size_t(kStripRows * s + 8 * h) * row_bytes; };
    const auto each_tile = [&](const auto& tile) {
      for (int t0 = 0; t0 < tokens; t0 += kTileTokens) {
        const int t = std::min(t0, tokens - kTileTokens);
        for (int64_t s = 0; s < strips; ++s) tile(s, x + int64_t(t) * blocks, y + int64_t(t) * m.rows + r0 + kStripRows * s);
      }
    };
    Tiles::begin(m.dtype == DType::Q6_K ? kSubBlockTiles : kBlockTiles);
    if (small_blocks) {
      thread_local std::vector<Q8Strip> packed;
      packed.resize(size_t(strips * blocks));
      const auto pack = m.dtype == DType::Q8_0   ? &pack_small_blocks<DType::Q8_0>
                        : m.dtype == DType::Q4_0 ? &pack_small_blocks<DType::Q4_0>
                        : m.dtype == DType::Q5_0 ? &pack_small_blocks<DType::Q5_0>
                        : m.dtype == DType::MXFP4 ? &pack_small_blocks<DType::MXFP4>
                                                 : &pack_small_blocks<DType::IQ4_NL>;
      for (int64_t s = 0; s < strips; ++s)
        if (m.dtype == DType::IQ4_XS) pack_iq4_xs(group(s, 0), group(s, 1), blocks / 8, &packed[size_t(s * blocks)]);
        else pack(group(s, 0), group(s, 1), blocks, &packed[size_t(s * blocks)]);
      each_tile([&](int64_t s, const ActivationBlock* xt, float* yt) {
        q8_0_tile<Tiles>(&packed[size_t(s * blocks)], xt, blocks, yt, m.rows);
      });
    } else if (m.dtype == DType::Q6_K) {
      thread_local std::vector<Q6Strip> packed;
      const int64_t super_blocks = blocks / 8;
      packed.resize(size_t(strips * super_blocks));
      for (int64_t s = 0; s < strips; ++s) pack_q6_k(group(s, 0), group(s, 1), super_blocks, &packed[size_t(s * super_blocks)]);
      each_tile([&](int64_t s, const ActivationBlock* xt, float* yt) {
        q6_k_tile<Tiles>(&packed[size_t(s * super_blocks)], xt, blocks, yt, m.rows);
      });
    } else {
      thread_local std::vector<Q4Strip> packed;
      const int64_t super_blocks = blocks / 8;
      packed.resize(size_t(strips * super_blocks));
      const auto pack = m.dtype == DType::Q4_K ? &pack_q4_k<DType::Q4_K> : &pack_q4_k<DType::Q5_K>;
      for (int64_t s = 0; s < strips; ++s) pack(group(s, 0), group(s, 1), super_blocks, &packed[size_t(s * super_blocks)]);
      each_tile([&](int64_t s, const ActivationBlock* xt, float* yt) {
        q4_k_tile<Tiles>(&packed[size_t(s * super_blocks)], xt, blocks, yt, m.rows);
      });
    }
    Tiles::end();
  }
  if (strip_end < r1) avx512_vnni_kernels().quant_matmul_rows(m, x, sums, tokens, y, strip_end, r1);
}

// The bf16 products (Bf16Tiles matrices, kernels.hpp: pack_bf16_tiles) against f32 activations
// split into three bf16 parts (bf16_parts: hi + mid + lo = x), so the activations keep their 24
// bits, as the other ISAs' widening products do, at the tile unit's rate. A token's three parts are
// three rows of the A tile (5 tokens fill 15 of its 16 rows) and its outputs three rows of each C
// tile, added at the end as (hi + mid) + lo: one TDPBF16PS per strip of 16 rows and chunk of 32
// columns, whatever the token count. A row of C depends only on its row of A, so a token gets the
// same bits alone and among others (decode and prefill alike), and every token count runs here
// (the FMA path would give other bits). Weights packed at load (the stored layout is B's order):
// packing per call ran one token at 2-6 GB/s on a Sapphire Rapids class Xeon.
// Tiles: C 0..3, one per strip of a pass of up to 64 rows; A 4; B 5 and 6, strips in turn.
constexpr int kPartTokens = 5;
constexpr TileConfig bf16_tile_config(int a_rows) {
  TileConfig c;
  for (int t = 0; t < 5; ++t) c.colsb[t] = 64, c.rows[t] = uint8_t(a_rows);
  for (int t = 5; t < 7; ++t) c.colsb[t] = 64, c.rows[t] = 16;
  return c;
}

// One chunk of strip S: its B tile (asked for kAhead chunks before it is read: a tile load waits
// for all of its 16 lines, and one token's weights come from memory), times A into C tile S.
template <class Tiles, int S>
void bf16_strip_chunk(const uint16_t* const* strips, int strip_count, int64_t c, int64_t chunks) {
  if constexpr (S > 0)
    if (S >= strip_count) return;
  constexpr int64_t kAhead = 4;
  const uint16_t* b = strips[S] + c * 512;
  if (c + kAhead < chunks)
    for (int line = 0; line < 16; ++line) _mm_prefetch(reinterpret_cast<const char*>(b + kAhead * 512 + 32 * line), _MM_HINT_T0);
  Tiles::template tile_load<5 + S % 2>(b, 64);
  Tiles::template dot_bf16<S, 4, 5 + S % 2>();
}

// C tile S's tokens [t, t + count) as y's rows, columns [first, first + valid).
template <class Tiles, int S>
void bf16_store(int strip_count, int count, int64_t first, int64_t valid, float* y, int64_t ldy) {
  if constexpr (S > 0)
    if (S >= strip_count) return;
  alignas(64) float sums[16][16];
  Tiles::template tile_store<S>(sums, 64);
  const __mmask16 mask = __mmask16((1u << valid) - 1);
  for (int i = 0; i < count; ++i) {
    const __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(sums[3 * i]), _mm512_load_ps(sums[3 * i + 1])),
                                   _mm512_load_ps(sums[3 * i + 2]));
    _mm512_mask_storeu_ps(y + i * ldy + first, mask, v);
  }
}

template <class Tiles>
void bf16_tile_matmul_rows(const Matrix& m, const uint16_t* parts, int tokens, float* y, int64_t r0, int64_t r1) {
  if (tokens == 0 || r1 <= r0) return;
  const int64_t cols = m.cols, chunks = cols / 32, whole = m.rows / kStripRows * kStripRows;
  const auto* w = static_cast<const uint16_t*>(m.data);
  const int group = std::min(tokens, kPartTokens);
  // The rows after the last whole strip lie as rows: packed here, per call, with zero rows after
  // them (their outputs not stored).
  thread_local std::vector<uint16_t> tail;
  Tiles::begin(bf16_tile_config(3 * group));
  for (int64_t s0 = r0; s0 < r1; s0 += 4 * kStripRows) {
    const int strip_count = int(std::min<int64_t>(4, (r1 - s0 + kStripRows - 1) / kStripRows));
    const uint16_t* strips[4];
    for (int s = 0; s < strip_count; ++s) {
      const int64_t first = s0 + kStripRows * s;
      strips[s] = w + first * cols;
      if (first < whole) continue;
      tail.assign(size_t(16 * cols), 0);
      for (int64_t c = 0; c < chunks; ++c)
        for (int k = 0; k < 16; ++k)
          for (int n = 0; n < m.rows - first; ++n)
            for (int i = 0; i < 2; ++i) tail[size_t(512 * c + 32 * k + 2 * n + i)] = w[(first + n) * cols + 32 * c + 2 * k + i];
      strips[s] = tail.data();
    }
    // Groups of `group` tokens; the last one ends at the last token, recomputing the ones it shares
    // with the group before (the same operations: the same values written again).
    for (int t0 = 0; t0 < tokens; t0 += group) {
      const int t = std::min(t0, tokens - group);
      const uint16_t* a = parts + size_t(3 * t) * size_t(cols);
      Tiles::template tile_zero<0>();
      Tiles::template tile_zero<1>();
      Tiles::template tile_zero<2>();
      Tiles::template tile_zero<3>();
      for (int64_t c = 0; c < chunks; ++c) {
        Tiles::template tile_load<4>(a + 32 * c, cols * 2);
        bf16_strip_chunk<Tiles, 0>(strips, strip_count, c, chunks);
        bf16_strip_chunk<Tiles, 1>(strips, strip_count, c, chunks);
        bf16_strip_chunk<Tiles, 2>(strips, strip_count, c, chunks);
        bf16_strip_chunk<Tiles, 3>(strips, strip_count, c, chunks);
      }
      float* yt = y + int64_t(t) * m.rows;
      const auto valid = [&](int s) { return std::min<int64_t>(kStripRows, r1 - s0 - kStripRows * s); };
      bf16_store<Tiles, 0>(strip_count, group, s0, valid(0), yt, m.rows);
      bf16_store<Tiles, 1>(strip_count, group, s0 + 16, valid(1), yt, m.rows);
      bf16_store<Tiles, 2>(strip_count, group, s0 + 32, valid(2), yt, m.rows);
      bf16_store<Tiles, 3>(strip_count, group, s0 + 48, valid(3), yt, m.rows);
    }
  }
  Tiles::end();
}

template <class Tiles>
KernelTable amx_table() {
  KernelTable t = avx512_vnni_kernels();  // every other product is the VNNI table's
  t.isa = Isa::Amx;
  t.quant_matmul_rows = &quant_matmul_rows<Tiles>;
  t.bf16_tile_matmul_rows = &bf16_tile_matmul_rows<Tiles>;
  return t;
}

}  // namespace

const KernelTable& amx_kernels() {
  static const KernelTable table = amx_table<AmxTiles>();
  return table;
}

const KernelTable& amx_emulated_kernels() {
  static const KernelTable table = amx_table<EmulatedTiles>();
  return table;
}

}  // namespace crossmoe::kernels
