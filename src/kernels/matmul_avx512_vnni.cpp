// AVX-512 with VNNI: the AVX-512 table with the quantized products of QuantLaneAvx512Vnni.
// Compiled with the AVX-512 and VNNI flags; only CPUs with avx512_vnni get this table (AVX-512
// CPUs without it, Skylake-SP for one, keep avx512_kernels(), whose integer products are AVX2's).
#include <immintrin.h>

#include "kernels/quant_lane_avx512_vnni.hpp"
#include "kernels/quant_matmul_impl.hpp"

namespace crossmoe::kernels {

const KernelTable& avx512_vnni_kernels() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernels();  // the float products are AVX-512's, whatever they use
    t.isa = Isa::Avx512Vnni;
    t.quant_matmul_rows = &quant_impl::quant_matmul_rows<QuantLaneAvx512Vnni>;
    t.quantize_activations = &QuantLaneAvx512Vnni::quantize_activations;
    return t;
  }();
  return table;
}

}  // namespace crossmoe::kernels
