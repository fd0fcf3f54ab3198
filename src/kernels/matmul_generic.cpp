// Portable kernels: one float per "vector"; the compiler vectorises what it can.
#include "kernels/matmul_impl.hpp"

namespace crossmoe::kernels {

namespace {
struct Scalar {
  using V = float;
  static constexpr int width = 1;
  static constexpr int tile_tokens = 4;
  static V zero() { return 0.0f; }
  static V broadcast(float a) { return a; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V fma(V a, V b, V acc) { return acc + a * b; }
  static float sum(V v) { return v; }
  template <DType D> static V widen(const impl::Stored<D>* p) { return impl::scalar_widen<D>(*p); }
  static void widen_bf16_pair(const uint16_t* p, V& even, V& odd) {
    even = impl::scalar_widen<DType::BF16>(p[0]);
    odd = impl::scalar_widen<DType::BF16>(p[1]);
  }
};

struct QuantLaneScalar {
  using Acc = float;
  static Acc zero() { return 0.0f; }
  static float sum(Acc v) { return v; }
  static float half(const uint8_t* p) { return quant::read_half(p); }
  using Scale = float;
  static Scale splat(float v) { return v; }
  static Acc madd_q8(const int8_t* w, const int8_t* a, Scale dw, const float* da, Acc acc) {
    int32_t s = 0;
    for (int i = 0; i < 32; ++i) s += int32_t(w[i]) * a[i];
    return acc + dw * *da * float(s);
  }
  using Int = int32_t;
  static Int int_zero() { return 0; }
  static Int madd_q4(const uint8_t* q, const int8_t* a_lo, const int8_t* a_hi, int s_lo, int s_hi, Int acc) {
    int32_t lo = 0, hi = 0;
    for (int i = 0; i < 32; ++i) {
      lo += int32_t(q[i] & 15) * a_lo[i];
      hi += int32_t(q[i] >> 4) * a_hi[i];
    }
    return acc + s_lo * lo + s_hi * hi;
  }
  static Int madd_mins(const uint8_t* m, const int16_t* s) {
    int32_t sum = 0;
    for (int j = 0; j < 8; ++j) sum += int32_t(m[j]) * s[j];
    return sum;
  }
  static Acc madd_int(Int sums, float scale, Acc acc) { return acc + scale * float(sums); }
};
}  // namespace

const KernelTable& generic_kernels() {
  static const KernelTable table = impl::make_table<Scalar, QuantLaneScalar>(Isa::Generic);
  return table;
}

}  // namespace crossmoe::kernels
