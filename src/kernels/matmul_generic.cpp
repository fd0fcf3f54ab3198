// Portable kernels: one float per "vector"; the compiler vectorises what it can.
#include "kernels/matmul_impl.hpp"

namespace crossmoe::kernels {

namespace {
struct Scalar {
  using V = float;
  static constexpr int width = 1;
  static V zero() { return 0.0f; }
  static V broadcast(float a) { return a; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V fma(V a, V b, V acc) { return acc + a * b; }
  static float sum(V v) { return v; }
  template <DType D> static V widen(const impl::Stored<D>* p) { return impl::scalar_widen<D>(*p); }
};
}  // namespace

const KernelTable& generic_kernels() {
  static const KernelTable table = impl::make_table<Scalar>(Isa::Generic);
  return table;
}

}  // namespace crossmoe::kernels
