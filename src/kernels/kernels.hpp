#pragma once
// CPU math. Activations are f32; weights stay in their stored dtype (f32, f16, bf16) and are
// widened to f32 in registers, so a bf16 model is never converted as a whole. Block-quantized
// weights (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: util/quant.hpp) multiply activations quantized to 8 bits (one step
// per 32 or 256 columns: activation_group) with integer dot products, as llama.cpp does.
// One dispatch point picks AVX-512 (with or without VNNI), AVX2 or portable code at run time.
// Asked for (CROSSMOE_ISA=avx512_bf16), bf16 weights multiply activations rounded to bf16 with the
// AVX512_BF16 dot product instead, as llama.cpp does (matmul_avx512_bf16.cpp). Where the CPU has
// AMX (tiles and int8), the quantized products of many tokens run on the tile unit (matmul_amx.cpp);
// where it also has AMX-BF16, bf16 matrices in memory are stored in the tile unit's order and every
// product with them runs on the tiles, against the activations split into three bf16 parts.
#include <cstdint>
#include <string>

#include "util/dtype.hpp"

namespace crossmoe::kernels {

// How a matrix's rows lie: one after another; a block-quantized matrix's interleaved 8 at a time
// (util/quant.hpp) so that the products read 8 rows per pass over the activations; a bf16 matrix's
// in the tile unit's order (Bf16Tiles: pack_bf16_tiles).
enum class Layout { Rows, Interleaved8, Bf16Tiles };

// A row-major [rows, cols] weight matrix in its stored dtype; row r starts at element r * stride
// (stride 0 means cols: rows packed back to back). Rows of a block type are whole blocks.
// An Interleaved8 matrix is read by matmul only (its rows are not whole in memory).
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;
  Layout layout = Layout::Rows;
  int64_t row_stride() const { return stride ? stride : cols; }
};

// Rewrites a matrix of a block type whose rows lie back to back into the
// Interleaved8 layout, in place: `data` is m.data, writable. Its groups of 8 rows are interleaved, the
// rows after the last whole group stay as they are. Other matrices (other dtypes; strided, fewer
// than 8 rows, already interleaved) are left alone. Every ISA's kernels read
// both layouts.
void interleave_rows8(Matrix& m, void* data);

// Rewrites a bf16 matrix whose rows lie back to back, cols a multiple of 32 and at least 16 rows,
// into the Bf16Tiles layout, in place (`data` is m.data, writable): each strip of 16 rows becomes
// its chunks of 32 columns one after another, a chunk being TDPBF16PS's B tile (16 lines of 64
// bytes, line k holding columns 2k and 2k + 1 of each of the 16 rows: w[n][32c + 2k + i] at
// element 32k + 2n + i); the rows after the last whole strip stay as they are. Other matrices are
// left alone. A Bf16Tiles matrix is multiplied on the tile unit whatever the active ISA (on the
// scalar model of it, amx_emulated_kernels, where the CPU has no AMX-BF16).
void pack_bf16_tiles(Matrix& m, void* data);
// Whether bf16 matrices in memory go to the tile unit (arrange_for_matmul packs them): ByIsa where
// the active ISA is Amx and the CPU has AMX-BF16; Always (the scalar model of the tile unit
// multiplies them on CPUs without AMX-BF16, which needs AVX-512 VNNI: for tests); Never (the other
// ISAs' bits on an AMX machine). CROSSMOE_BF16_TILES=1 or 0 sets Always or Never at start.
enum class Bf16TilesUse { ByIsa, Always, Never };
// Whether this CPU's tile unit multiplies Bf16Tiles matrices (AMX-BF16, and the tile data granted).
bool amx_bf16_supported();
bool bf16_tiles_in_use();
void set_bf16_tiles(Bf16TilesUse use);
// The layout the runtime keeps a matrix in memory in, in place: interleave_rows8 for the block
// types, pack_bf16_tiles for bf16 where bf16_tiles_in_use().
void arrange_for_matmul(Matrix& m, void* data);

// The three bf16 parts of x [tokens, cols] as the Bf16Tiles products read them: out
// [tokens][3][cols], hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid) (each rounded to
// nearest even; hi + mid + lo = x exactly for finite x whose parts are normal numbers: the tile
// unit treats bf16 subnormals as zero, a relative 2^-126 at most).
void bf16_parts(const float* x, int tokens, int64_t cols, uint16_t* out);

// y[t, r] = sum_c x[t, c] * w[r, c] for t < tokens.  x: [tokens, cols], y: [tokens, rows].
// Rows are split over all threads.
void matmul(const Matrix& w, const float* x, int tokens, float* y);

// Several independent matmuls in one parallel region: for many small matrices (the experts
// one token chose, or q, k and v) this saves a fork and join per matrix.
struct MatmulJob {
  Matrix w;
  const float* x;
  int tokens;
  float* y;
};
void matmul_batch(const MatmulJob* jobs, int count);

float dot(const float* a, const float* b, int n);
void axpy(float a, const float* x, float* y, int n);  // y += a * x
// Attention of nq queries of one head against cached positions of one block. Keys lie in tiles of
// kKeyTile positions, each [hd][kKeyTile] (position p's dimension d at
// keys[(p / kKeyTile) * kKeyTile * hd + d * kKeyTile + p % kKeyTile]), so that one vector holds a
// dimension of many positions and a score needs no sum across lanes; values lie [position][hd].
// attention_scores: scores[i][p - lo] = q[i] . key p for p in [lo, hi) (the tiles of a block
// allocated whole: lanes outside [lo, hi) are read, not written). attention_values: out[i][0, hd)
// += sum_j p[i][j] * values[j] for j < n, j in order. A query's result depends on its own inputs
// only: the same bits whatever the other queries of the call, and however a range of positions
// is split over calls (so alone or in a batch, prefilled in any chunks or decoded one at a time).
inline constexpr int kKeyTile = 16;
void attention_scores(const float* const* q, int nq, const float* keys, int lo, int hi, int hd, float* const* scores);
void attention_values(const float* const* p, int nq, const float* values, int n, int hd, float* const* out);
// attention_values where each position's value is the first vd of its hd key dimensions, read from
// the keys' tiles (latent attention keeps its values there: KvPool): out[i][0, vd) += sum over
// positions j in [lo, hi) of p[i][j - lo] * key j's [0, vd), with the same bits as
// attention_values over those dimensions laid [position][vd].
void attention_values_in_keys(const float* const* p, int nq, const float* keys, int lo, int hi, int hd, int vd,
                              float* const* out);
// e^x for n floats, within 1 ulp of the exact value (normal results; subnormal ones to their
// spacing), e^-inf = 0, e^x = inf past the float range, NaN stays NaN: a polynomial whose every
// step is the same IEEE operation on every ISA (fused multiply-adds fused in the portable code
// too), so the same bits whatever the ISA and whatever the elements beside each one.
void exp_floats(const float* x, int n, float* out);
// Attention's softmax without its division: row[j] = e^(scale * row[j] - m), m the largest of
// scale * row[j], for j < n; returns the sum of the new row, added in 16 lanes (element j into
// lane j % 16, then the lanes in a fixed tree). The same bits on every ISA; the caller scales the
// row's P V by 1 / sum (hd multiplications, not n).
float attention_softmax(float* row, int n, float scale);

// out = x / sqrt(mean(x^2) + eps) * weight
void rmsnorm(const float* x, const float* weight, int n, float eps, float* out);
// rmsnorm of each of `rows` rows of n (x and out [rows, n]), spread over the threads when there
// are many (a prefill's tokens): the same bits as one row at a time.
void rmsnorm_rows(const float* x, const float* weight, int rows, int n, float eps, float* out);
// In place: x = softmax(x)
void softmax(float* x, int n);
// In place: gate = silu(gate) * up
void silu_mul(float* gate, const float* up, int n);
// Rotates pairs (i, i + dim/2) of each of `heads` vectors of size dim (the rotate_half layout
// of Hugging Face models): cos and sin hold dim/2 values for one position.
void rope(float* x, int heads, int dim, const float* cos, const float* sin);

// Copies a stored row of n elements into f32 (dequantizes a row of a block type).
void to_f32(const void* src, DType dtype, int64_t n, float* dst);

// 32 activations as a quantized-weight product reads them: x[i] ~ d * q[i] with
// d = max|x| / 127 over the block's group (so |x[i] - d * q[i]| <= d / 2), and sum = sum of q
// (Q4_K's min term).
struct ActivationBlock {
  float d;
  int32_t sum;
  int8_t q[32];
};
// Columns that share one activation scale against weights of a block type: 32 for the 32-value
// types (one block) and IQ4_XS (a sub-block), 256 for Q4_K, Q5_K and Q6_K (a super-block, as llama.cpp's Q8_K: one float step per
// super-block lets the kernel apply the sub-block scales in integers).
int64_t activation_group(DType weights);
// n a multiple of group (32 or 256); every block of a group gets the group's d. The portable
// definition; each ISA's table has a version that gives the same bytes (tested), so every ISA
// multiplies the same integers.
void quantize_activations(const float* x, int64_t n, int64_t group, ActivationBlock* out);
// The n blocks' sums as int16 (|sum| <= 32 * 127), the form the Q4_K products read their min
// terms in (8 per super-block as one vector): made once per quantized input (matmul_batch does),
// not once per block of rows.
void activation_sums(const ActivationBlock* x, int64_t n, int16_t* out);
// The n blocks' sums over their two halves of 16 (2n int16, block i's at 2i and 2i + 1), the form
// the Q2_K and Q3_K products read their min terms in (16 per super-block, one per sub-block).
void activation_half_sums(const ActivationBlock* x, int64_t n, int16_t* out);
// What quant_matmul_rows reads as sums for weights of this type: activation_sums (Q4_K, Q5_K,
// Q6_K), activation_half_sums (Q2_K, Q3_K), nothing (the 32-value types): the int16 per block.
int activation_sums_per_block(DType weights);
void activation_sums_for(DType weights, const ActivationBlock* x, int64_t n, int16_t* out);

// Avx512Vnni: the AVX-512 kernels with the quantized products in 512-bit VNNI dot products
// (vpdpbusd); Avx512 alone keeps the AVX2 integer products (AVX-512 CPUs without VNNI).
// Avx512Bf16: the Avx512Vnni kernels with bf16 weights multiplied by VDPBF16PS, against the
// activations rounded to bf16 (to nearest even, denormals to zero) once per matmul call: faster
// prefill, but 8 significant bits of each activation, so never chosen unless asked for.
// Amx: the Avx512Vnni kernels with Q8_0 / Q4_0 / Q5_0 / IQ4_NL / IQ4_XS / Q4_K / Q5_K / Q6_K weights times 16 tokens
// or more on AMX-INT8 tiles (the same bits: exact integer block sums, the same float steps); chosen
// where the CPU has AMX-TILE and AMX-INT8 and Linux grants the process the tile data. With
// AMX-BF16, its Bf16Tiles products take every token count (matmul_amx.cpp): their bits are the tile
// unit's own (its sums' order and rounding, which no IEEE sequence of the products reproduces, so
// they differ from the other ISAs' in the last bits), a token's the same alone or among others.
enum class Isa { Generic, Avx2, Avx512, Avx512Vnni, Avx512Bf16, Amx };
// Every ISA that has kernels here, in order of preference (the last one a CPU supports is used,
// Avx512Bf16 excepted: CROSSMOE_ISA only).
inline constexpr Isa kIsas[] = {Isa::Generic, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni, Isa::Avx512Bf16, Isa::Amx};
Isa active_isa();
std::string isa_name(Isa isa);
bool isa_supported(Isa isa);
// For tests and benchmarks: use another ISA (must be supported).
void set_isa(Isa isa);

// The per-ISA entry points behind the dispatch.
struct KernelTable {
  Isa isa;
  // Computes rows [row_begin, row_end) of matmul on the calling thread.
  // For bf16 weights, x in the layout bf16_x_layout writes (in a buffer of tokens * cols floats).
  void (*matmul_rows)(const Matrix& w, const float* x, int tokens, float* y, int64_t row_begin,
                      int64_t row_end);
  // Reorders x [tokens, cols] (columns within fixed chunks) as matmul_rows reads it against bf16
  // weights (Avx512Bf16: rounds it to bf16).
  void (*bf16_x_layout)(const float* x, int tokens, int64_t cols, float* out);
  // The same for block-quantized weights, x quantized: cols / 32 blocks per token; sums holds
  // activation_sums_for(w.dtype, x) (null for the 32-value types; Q5_K's and Q6_K's do not read it).
  void (*quant_matmul_rows)(const Matrix& w, const ActivationBlock* x, const int16_t* sums, int tokens, float* y,
                            int64_t row_begin, int64_t row_end);
  // quantize_activations, as fast as the ISA does it (decode quantizes every matmul's input).
  void (*quantize_activations)(const float* x, int64_t n, int64_t group, ActivationBlock* out);
  float (*dot)(const float* a, const float* b, int n);
  void (*axpy)(float a, const float* x, float* y, int n);
  void (*attention_scores)(const float* const* q, int nq, const float* keys, int lo, int hi, int hd,
                           float* const* scores);
  void (*attention_values)(const float* const* p, int nq, const float* values, int n, int hd, float* const* out);
  void (*attention_values_in_keys)(const float* const* p, int nq, const float* keys, int lo, int hi, int hd, int vd,
                                   float* const* out);
  void (*exp_floats)(const float* x, int n, float* out);
  float (*attention_softmax)(float* row, int n, float scale);
  // Rows [row_begin, row_end) (row_begin a multiple of 16) of a Bf16Tiles matrix against x's
  // bf16_parts (the Amx tables only).
  void (*bf16_tile_matmul_rows)(const Matrix& w, const uint16_t* parts, int tokens, float* y, int64_t row_begin,
                                int64_t row_end) = nullptr;
};
const KernelTable& generic_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512_vnni_kernels();
const KernelTable& avx512_bf16_kernels();
const KernelTable& amx_kernels();
// For tests: amx_kernels() with its tile instructions carried out by a scalar model of the tile
// unit, so that its tiles' layout and float steps are tested on CPUs with AVX-512 VNNI but no AMX.
const KernelTable& amx_emulated_kernels();

}  // namespace crossmoe::kernels
