#include <asm/prctl.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/kernels.hpp"
#include "kernels/thread_pool.hpp"
#include "util/error.hpp"
#include "util/round_up.hpp"

namespace crossmoe::kernels {

namespace {

const KernelTable& table_for(Isa isa) {
  switch (isa) {
    case Isa::Amx: return amx_kernels();
    case Isa::Avx512Bf16: return avx512_bf16_kernels();
    case Isa::Avx512Vnni: return avx512_vnni_kernels();
    case Isa::Avx512: return avx512_kernels();
    case Isa::Avx2: return avx2_kernels();
    default: return generic_kernels();
  }
}

// AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25), and the tile data's state, which Linux
// (5.16 on) hands to a process only when asked: ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA (18),
// granted to every thread of the process. It fails where the kernel or XCR0 lacks the feature.
bool amx_usable() {
  static const bool usable = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & bit_AMX_TILE) || !(d & bit_AMX_INT8)) return false;
    constexpr long kXFeatureTileData = 18;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, kXFeatureTileData) == 0;
  }();
  return usable;
}

Bf16TilesUse& bf16_tiles_use() {
  static Bf16TilesUse use = [] {
    const char* env = std::getenv("CROSSMOE_BF16_TILES");
    if (env && std::string(env) == "1") return Bf16TilesUse::Always;
    if (env && std::string(env) == "0") return Bf16TilesUse::Never;
    return Bf16TilesUse::ByIsa;
  }();
  return use;
}

// Where Bf16Tiles products run: the tile unit, or its scalar model on a CPU without AMX-BF16 (a
// test's matrices: set_bf16_tiles).
const KernelTable& bf16_tiles_table() {
  if (amx_bf16_supported()) return amx_kernels();
  require(isa_supported(Isa::Avx512Vnni), "a bf16 matrix in the tile layout needs AMX-BF16, or AVX-512 VNNI for its model");
  return amx_emulated_kernels();
}

// The best ISA this CPU runs, unless CROSSMOE_ISA=generic|avx2|avx512|avx512_vnni|avx512_bf16|amx asks
// for another. avx512_bf16 only when asked for: it rounds activations to bf16 against bf16 weights.
const KernelTable* choose() {
  Isa isa = Isa::Generic;
  for (Isa candidate : kIsas)
    if (candidate != Isa::Avx512Bf16 && isa_supported(candidate)) isa = candidate;
  if (const char* env = std::getenv("CROSSMOE_ISA")) {
    for (Isa candidate : kIsas)
      if (isa_name(candidate) == env && isa_supported(candidate)) isa = candidate;
  }
  return &table_for(isa);
}

const KernelTable*& active() {
  static const KernelTable* table = choose();
  return table;
}

}  // namespace

bool isa_supported(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Amx: return isa_supported(Isa::Avx512Vnni) && amx_usable();
    case Isa::Avx512Bf16: return isa_supported(Isa::Avx512Vnni) && __builtin_cpu_supports("avx512bf16");
    case Isa::Avx512Vnni: return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    default: return true;
  }
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::Amx: return "amx";
    case Isa::Avx512Bf16: return "avx512_bf16";
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

Isa active_isa() { return active()->isa; }

void set_isa(Isa isa) {
  require(isa_supported(isa), "this CPU does not support " + isa_name(isa));
  active() = &table_for(isa);
}

// AMX-BF16 (CPUID leaf 7, EDX bit 22) beside the tiles amx_usable checks.
bool amx_bf16_supported() {
  static const bool supported = [] {
    unsigned a, b, c, d;
    return amx_usable() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & bit_AMX_BF16);
  }();
  return supported;
}

bool bf16_tiles_in_use() {
  switch (bf16_tiles_use()) {
    case Bf16TilesUse::Always: return true;
    case Bf16TilesUse::Never: return false;
    default: return active_isa() == Isa::Amx && amx_bf16_supported();
  }
}

void set_bf16_tiles(Bf16TilesUse use) { bf16_tiles_use() = use; }

void matmul(const Matrix& w, const float* x, int tokens, float* y) {
  const MatmulJob job{w, x, tokens, y};
  matmul_batch(&job, 1);
}

void matmul_batch(const MatmulJob* jobs, int count) {
  const KernelTable& k = *active();
  // Inputs are prepared once per distinct x (q, k and v share one; so do an expert's gate and
  // up), not once per block of rows: quantized for Q8_0/Q4_K weights (per block of 32 or per
  // super-block of 256: activation_group), reordered for bf16 weights (bf16_x_layout), split into
  // bf16 parts for bf16 weights in the tile layout (bf16_parts).
  // (Q2_K / Q3_K read their activations' sums per half block: a prep of their own.)
  enum Prep { kNone, kQuantized32, kQuantized256, kQuantized256Halves, kBf16, kBf16Parts };
  const auto prep_of = [&](int j) {
    const DType t = jobs[j].w.dtype;
    if (dtype_block(t) > 1)
      return activation_group(t) == 32 ? kQuantized32 : activation_sums_per_block(t) == 2 ? kQuantized256Halves : kQuantized256;
    if (t != DType::BF16) return kNone;
    return jobs[j].w.layout == Layout::Bf16Tiles ? kBf16Parts : kBf16;
  };
  const auto quantized_prep = [](Prep p) { return p == kQuantized32 || p == kQuantized256 || p == kQuantized256Halves; };
  thread_local std::vector<ActivationBlock> quantized;
  thread_local std::vector<int16_t> quantized_sums;  // their activation_sums_for the weights
  // The bf16 layouts start on 64-byte lines, each job's too: a 512-bit load of x that straddles two
  // lines costs two loads, and the tiles of several tokens read x from L1 as fast as they compute
  // (std::vector<float> gave 16-byte alignment: 4 x 4 tiles at ~0.75-0.85x the rate on aligned x).
  constexpr size_t kLineFloats = 16;
  struct alignas(64) FloatLine {
    float f[kLineFloats];
  };
  thread_local std::vector<FloatLine> reordered;
  // Per-call bookkeeping reuses the calling thread's storage (a decode step makes hundreds of
  // small calls); the workers reach it through these references, not by the thread_local names.
  thread_local std::vector<int> source_storage;
  thread_local std::vector<size_t> prepared_at_storage;
  thread_local std::vector<int64_t> first_block_storage, block_rows_storage;
  thread_local std::vector<Prep> prep_storage;
  std::vector<int>& source = source_storage;  // the job whose prepared input job j reads
  std::vector<size_t>& prepared_at = prepared_at_storage;
  std::vector<int64_t>& first_block = first_block_storage;
  std::vector<int64_t>& block_rows = block_rows_storage;  // rows per block of job j
  std::vector<Prep>& prep = prep_storage;  // job j's input preparation, looked up once per call
  source.assign(count, -1);
  prepared_at.assign(count, 0);
  prep.resize(count);
  for (int j = 0; j < count; ++j) prep[j] = prep_of(j);
  // Floats of job j's prepared input before token `first` (bf16_parts: 3 bf16 per value, 1.5 floats).
  const auto reordered_floats = [&](int j, int64_t first) {
    const int64_t values = first * jobs[j].w.cols;
    return prep[j] == kBf16Parts ? 3 * values / 2 : values;
  };
  const KernelTable* tiles = nullptr;  // where the call's Bf16Tiles products run, if it has any
  for (int j = 0; j < count; ++j)
    if (prep[j] == kBf16Parts) tiles = &bf16_tiles_table();
  size_t quantized_total = 0, reordered_total = 0;
  for (int j = 0; j < count; ++j) {
    if (prep[j] == kNone) continue;
    source[j] = j;
    for (int i = 0; i < j && source[j] == j; ++i)
      if (source[i] == i && prep[i] == prep[j] && jobs[i].x == jobs[j].x && jobs[i].w.cols == jobs[j].w.cols &&
          jobs[i].tokens == jobs[j].tokens)
        source[j] = i;
    if (source[j] != j) {
      prepared_at[j] = prepared_at[source[j]];
    } else if (quantized_prep(prep[j])) {
      prepared_at[j] = quantized_total;
      quantized_total += size_t(jobs[j].tokens) * size_t(jobs[j].w.cols / 32);
    } else {
      prepared_at[j] = reordered_total;
      reordered_total += round_up(size_t(reordered_floats(j, jobs[j].tokens)), kLineFloats);
    }
  }
  if (quantized.size() < quantized_total) {
    quantized.resize(quantized_total);
    quantized_sums.resize(2 * quantized_total);  // at most 2 per block, from 2 * prepared_at
  }
  if (reordered.size() * kLineFloats < reordered_total) reordered.resize(reordered_total / kLineFloats);
  // The caller's buffers, written by the preparation and read by every worker (by these pointers,
  // not by their thread_local names).
  ActivationBlock* const activations = quantized.data();
  int16_t* const block_sums = quantized_sums.data();
  float* const reordered_x = reinterpret_cast<float*>(reordered.data());
  // Tokens [first, first + n) of job j's input prepared: each token's blocks, sums and reordered
  // floats lie at its own offset, so token ranges can be prepared apart.
  const auto prepare = [&](int j, int first, int n) {
    const int64_t cols = jobs[j].w.cols;
    const float* x = jobs[j].x + first * cols;
    if (quantized_prep(prep[j])) {
      const int64_t at = int64_t(prepared_at[j]) + first * cols / 32, values = n * cols;
      k.quantize_activations(x, values, activation_group(jobs[j].w.dtype), activations + at);
      activation_sums_for(jobs[j].w.dtype, activations + at, values / 32,
                          block_sums + 2 * prepared_at[j] + activation_sums_per_block(jobs[j].w.dtype) * (first * cols / 32));
    } else if (prep[j] == kBf16Parts) {
      bf16_parts(x, n, cols, reinterpret_cast<uint16_t*>(reordered_x + prepared_at[j] + reordered_floats(j, first)));
    } else
      k.bf16_x_layout(x, n, cols, reordered_x + prepared_at[j] + first * cols);
  };
  int64_t prep_work = 0;
  for (int j = 0; j < count; ++j)
    if (source[j] == j) prep_work += int64_t(jobs[j].tokens) * jobs[j].w.cols;
  if (prep_work < kMinParallelWork) {
    for (int j = 0; j < count; ++j)
      if (source[j] == j) prepare(j, 0, jobs[j].tokens);
  } else {
    // A prefill's inputs (or an MoE step's experts' inputs) in pieces of tokens over the threads:
    // on the calling thread alone they were 1-3% of a prefill's samples, the other threads waiting.
    struct Piece {
      int job, first, count;
    };
    thread_local std::vector<Piece> pieces_storage;
    std::vector<Piece>& pieces = pieces_storage;
    pieces.clear();
    constexpr int kPieceTokens = 16;
    for (int j = 0; j < count; ++j)
      if (source[j] == j)
        for (int t = 0; t < jobs[j].tokens; t += kPieceTokens)
          pieces.push_back({j, t, std::min(kPieceTokens, jobs[j].tokens - t)});
    parallel_for(int64_t(pieces.size()), [&](int64_t i) { prepare(pieces[i].job, pieces[i].first, pieces[i].count); });
  }
  // Blocks of 16 rows keep each thread on whole tiles; small work stays on one thread. Quantized
  // weights against many tokens take blocks of 128 rows: each block reads all the tokens'
  // activations (1.25 bytes per token and column, MiBs for a prompt: from L3), while its rows
  // (at most ~300 KiB up to 2048 columns) stay in L2, so fewer, larger blocks read them less often.
  // One token takes blocks of 64 rows: its rows are read once whatever the block, and each block
  // costs a call with its bookkeeping (the call, its job's lookup, the row size), 3-4% of a dense
  // Q4_K decode's samples at 16 rows.
  // Float weights against more tokens than a batched decode step (prefill) take blocks of as many
  // rows as fit 256 KiB, 16 to 64: each group of 4 tokens passes over the block's rows from L2, and
  // each block reads every token's x from L3, so larger blocks read x fewer times (bf16 at 512
  // tokens, one thread: 1.05-1.4x per CPU second at 1024-2048 columns, 64 rows; 2816 columns gain
  // at 32 rows; 5632 columns lose past 16).
  const auto rows_per_block = [&](int j) -> int64_t {
    if (jobs[j].tokens == 1) return 64;
    if (quantized_prep(prep[j])) return jobs[j].tokens >= 32 ? 128 : 16;
    if (jobs[j].tokens <= 32) return 16;
    const size_t fit = (size_t(256) << 10) / dtype_row_bytes(jobs[j].w.dtype, jobs[j].w.cols);
    return fit >= 64 ? 64 : fit >= 32 ? 32 : 16;
  };
  first_block.assign(count + 1, 0);
  block_rows.resize(count);
  int64_t work = 0;
  for (int j = 0; j < count; ++j) {
    block_rows[j] = rows_per_block(j);
    first_block[j + 1] = first_block[j] + (jobs[j].w.rows + block_rows[j] - 1) / block_rows[j];
    work += jobs[j].w.rows * jobs[j].w.cols * int64_t(jobs[j].tokens);
  }
  const int64_t blocks = first_block[count];
  const bool parallel = work >= kMinParallelWork && blocks > 1;
  const auto run_block = [&](int64_t b) {
    const int j = int(std::upper_bound(first_block.begin(), first_block.end(), b) - first_block.begin()) - 1;
    const MatmulJob& job = jobs[j];
    const int64_t row = (b - first_block[j]) * block_rows[j];
    const int64_t end = std::min(job.w.rows, row + block_rows[j]);
    if (source[j] < 0)
      k.matmul_rows(job.w, job.x, job.tokens, job.y, row, end);
    else if (quantized_prep(prep[j]))
      k.quant_matmul_rows(job.w, activations + prepared_at[j],
                          prep[j] == kQuantized32 ? nullptr : block_sums + 2 * prepared_at[j], job.tokens, job.y,
                          row, end);
    else if (prep[j] == kBf16Parts)
      tiles->bf16_tile_matmul_rows(job.w, reinterpret_cast<const uint16_t*>(reordered_x + prepared_at[j]), job.tokens,
                                  job.y, row, end);
    else
      k.matmul_rows(job.w, reordered_x + prepared_at[j], job.tokens, job.y, row, end);
  };
  if (parallel) {
    parallel_for(blocks, run_block);
  } else {
    for (int64_t b = 0; b < blocks; ++b) run_block(b);
  }
}

float dot(const float* a, const float* b, int n) { return active()->dot(a, b, n); }
void axpy(float a, const float* x, float* y, int n) { active()->axpy(a, x, y, n); }
void attention_scores(const float* const* q, int nq, const float* keys, int lo, int hi, int hd, float* const* scores) {
  active()->attention_scores(q, nq, keys, lo, hi, hd, scores);
}
void attention_values(const float* const* p, int nq, const float* values, int n, int hd, float* const* out) {
  active()->attention_values(p, nq, values, n, hd, out);
}
void attention_values_in_keys(const float* const* p, int nq, const float* keys, int lo, int hi, int hd, int vd,
                              float* const* out) {
  active()->attention_values_in_keys(p, nq, keys, lo, hi, hd, vd, out);
}
void exp_floats(const float* x, int n, float* out) { active()->exp_floats(x, n, out); }
float attention_softmax(float* row, int n, float scale) { return active()->attention_softmax(row, n, scale); }

}  // namespace crossmoe::kernels
