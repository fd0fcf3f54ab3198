#!/usr/bin/env bash
# Builds the crossmoe CLI (trainer included) on the lent GPU machine, which has a CUDA libtorch
# (from its Python torch) and g++ but none of our Debian -dev packages and no network.
#   here:    bash scripts/gpu_box_build.sh prepare .carry [DATA]  # headers, static libs, generated
#            sources from the CMake build (BUILD_DIR, default build), token data
#   there:   bash scripts/gpu_box_build.sh build .carry     # -> .carry/crossmoe
#   check:   bash scripts/gpu_box_build.sh commands .carry  # the compile commands, one per line
#   there:   bash scripts/gpu_box_build.sh kernel-tests .carry  # -> .carry/kernel_tests: the kernel and
#            quantization tests (GoogleTest, from Debian's googletest sources), to run the ISA paths
#            that machine's CPU has and ours may lack (AVX-512, AMX); and .carry/bench_matvec,
#            .carry/bench_amx_bf16
# (.carry is listed in .git/info/exclude and passed to the device tool's `carry`.)
set -euo pipefail
mode=$1; dir=$2
if [ "$mode" = prepare ]; then
  mkdir -p "$dir/include" "$dir/lib" "$dir/data"
  cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/pcre2.h /usr/include/utf8proc.h /usr/include/httplib.h "$dir/include/"
  cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a /usr/lib/x86_64-linux-gnu/libutf8proc.a "$dir/lib/"
  # Debian's cpp-httplib is compiled (httplib.h declares, the library defines); it goes with its
  # brotli libraries, which the GPU machine may lack (libssl and zlib it has).
  for lib in libcpp-httplib.so.0.11 libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$lib" "$dir/lib/"
  done
  # The sources CMake generates (the Leduc Nash policy and the chat page compiled in), made by a build here.
  mkdir -p "$dir/gen" "$dir/gtest"
  cp -r /usr/src/googletest/googletest/include /usr/src/googletest/googletest/src "$dir/gtest/"
  cp "${BUILD_DIR:-build}/src/leduc_poker_nash_policy.cpp" "${BUILD_DIR:-build}/src/chat_page.cpp" "$dir/gen/"
  data=${3:-build/demo/data}
  # The commit for `crossmoe --version` (the GPU machine gets no .git).
  echo "#define CROSSMOE_GIT_COMMIT \"$(git rev-parse --short=12 HEAD 2>/dev/null)\"" > "$dir/include/git_commit.h"
  if [ -d "$data" ]; then  # token data for `train` runs (RL runs need none)
    cp "$data"/train.bin "$data"/val.bin "$dir/data/"
    tok=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokenizer'])" "$data/meta.json")
    cp "$tok" "$dir/data/tokenizer.json"
    # Its chat template, when `crossmoe tokenizer train` wrote one beside it.
    tok_config=$(dirname "$tok")/tokenizer_config.json
    [ -f "$tok_config" ] && cp "$tok_config" "$dir/data/"
    python3 - "$data/meta.json" "$dir/data" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1])); meta["tokenizer"] = sys.argv[2] + "/tokenizer.json"
json.dump(meta, open(sys.argv[2] + "/meta.json", "w"), indent=1)
PY
  fi
  exit 0
fi
# The torch install: from the Python torch, or TORCH_DIR / TORCH_ABI when set (to try the script
# elsewhere, e.g. `bash scripts/gpu_box_build.sh commands DIR` prints the compile commands).
TORCH=${TORCH_DIR:-$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')}
ABI=${TORCH_ABI:-$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')}
# -g1: function names and lines in a backtrace (cuda-gdb is the debugger there), at little cost.
flags=(-std=c++20 -O3 -g1 -DNDEBUG -fopenmp "-D_GLIBCXX_USE_CXX11_ABI=$ABI" -DCROSSMOE_HAVE_TORCH -Isrc "-I$dir/include"
       "-I$TORCH/include" "-I$TORCH/include/torch/csrc/api/include")
# The CUDA runtime's headers, for the rollout engine's CUDA graphs (rl/decode_graphs).
CUDA_INCLUDE=${CUDA_INCLUDE:-/usr/local/cuda/include}
cuda_link=()
if [ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ]; then
  flags+=(-DCROSSMOE_HAVE_CUDA "-I$CUDA_INCLUDE")
  # The CUDA runtime that libtorch itself loads (the pip wheels carry it beside torch), else the toolkit's.
  for cudart in "$TORCH"/../nvidia/*/lib/libcudart.so.* /usr/local/cuda/lib64/libcudart.so; do
    if [ -f "$cudart" ]; then cuda_link=("$cudart" -Wl,-rpath,"$(dirname "$cudart")"); break; fi
  done
fi
# The experts' grouped matrix products (at::_grouped_mm, libtorch 2.8 or later), when this libtorch has them.
if [ "$mode" = build ] && printf '#include <ATen/ATen.h>\nat::Tensor f(const at::Tensor& a, const at::Tensor& b, const at::Tensor& e) { return at::_grouped_mm(a, b, e); }\n' |
     g++ "${flags[@]}" -x c++ -fsyntax-only - 2>/dev/null; then
  flags+=(-DCROSSMOE_HAVE_GROUPED_MM)
  echo "grouped expert products: on (at::_grouped_mm)"
fi
# libtorch's RMSNorm (at::rms_norm) and fused AdamW (at::_fused_adamw_), for the trainer on CUDA: the
# calls the trainer makes, as src/CMakeLists.txt probes them.
rms_norm_probe='#include <ATen/ATen.h>
at::Tensor f(const at::Tensor& xf, const at::Tensor& weight, double eps) { return at::rms_norm(xf, {xf.size(-1)}, weight, eps); }'
fused_adamw_probe='#include <ATen/ATen.h>
#include <vector>
void f(const std::vector<at::Tensor>& g, double lr) {
  const std::vector<at::Tensor> steps(g.size(), g[0]);
  at::_fused_adamw_(g, g, g, g, {}, steps, lr, 0.9, 0.95, 0.1, 1e-8, false, false);
}'
if [ "$mode" = build ]; then
  for feature in RMS_NORM FUSED_ADAMW; do
    probe=$rms_norm_probe
    [ $feature = FUSED_ADAMW ] && probe=$fused_adamw_probe
    if printf '%s\n' "$probe" | g++ "${flags[@]}" -x c++ -fsyntax-only - 2>/dev/null; then
      flags+=("-DCROSSMOE_HAVE_$feature")
      echo "trainer's fused kernels: $feature on"
    else
      echo "trainer's fused kernels: $feature off"
    fi
  done
fi
# c10d's NCCL process group (`train --nproc N --device cuda`), when this libtorch has it: its header
# is compiled only with USE_C10D_NCCL and includes NCCL's nccl.h and CUDA's library headers, which
# the pip wheels carry under nvidia/*/include (after the toolkit's, which win where both have one).
# On only when a program that makes a ProcessGroupNCCL compiles and links here.
if [ "$mode" = build ]; then
  nccl_flags=(-DUSE_C10D_NCCL -DCROSSMOE_HAVE_NCCL)
  for include in "$TORCH"/../nvidia/*/include; do [ -d "$include" ] && nccl_flags+=("-I$include"); done
  probe='#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
int main(int argc, char**) {
  if (argc > 1000) c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::intrusive_ptr<c10d::Store>(), 0, 1);
  return 0;
}'
  if printf '%s\n' "$probe" | g++ "${flags[@]}" "${nccl_flags[@]}" -x c++ - -x none -o "$dir/nccl_probe" "${cuda_link[@]}" \
       -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -Wl,--no-as-needed -ltorch -ltorch_cuda -ltorch_cpu -lc10_cuda -lc10 \
       2> "$dir/nccl_probe.log"; then
    flags+=("${nccl_flags[@]}")
    echo "NCCL backend (train --nproc with --device cuda): on"
  else
    echo "NCCL backend (train --nproc with --device cuda): off (the probe's errors: $dir/nccl_probe.log)"
  fi
fi
shopt -s nullglob  # no generated sources prepared (`commands` on a fresh folder): none listed
srcs=(src/*/*.cpp apps/crossmoe/*.cpp "$dir"/gen/*.cpp)
object() { echo "$dir/obj/$(echo "$1" | tr / _).o"; }
# One compile command per line, each word quoted for bash, so no flag list can break a line.
compile_commands() {
  local f isa
  for f in "${srcs[@]}"; do
    isa=()
    case $f in  # as src/CMakeLists.txt: each ISA's flags, float operations as written
      *matmul_generic*) isa=(-ffp-contract=off) ;;
      *avx2*) isa=(-mavx2 -mfma -mf16c -ffp-contract=off) ;;
      *avx512_bf16*) isa=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -ffp-contract=off) ;;
      *avx512_vnni*) isa=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c -ffp-contract=off) ;;
      *matmul_amx*) isa=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mamx-tile -mamx-int8 -mamx-bf16 -mfma -mf16c -ffp-contract=off) ;;
      *avx512*) isa=(-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -ffp-contract=off) ;;
    esac
    printf '%q ' g++ "${flags[@]}" "${isa[@]}" -c "$f" -o "$(object "$f")"
    printf '\n'
  done
}
if [ "$mode" = commands ]; then compile_commands; exit 0; fi
if [ "$mode" = kernel-tests ]; then
  # Kernels and their helpers need no torch; GoogleTest builds from its own sources.
  flags+=("-I$dir/gtest/include" "-I$dir/gtest" -Itests)
  # bench_matvec and bench_amx_bf16 too, for the kernels' speed on that CPU.
  lib_srcs=(src/kernels/*.cpp src/util/*.cpp)
  test_srcs=(tests/test_kernels.cpp tests/test_quant.cpp "$dir/gtest/src/gtest-all.cc" "$dir/gtest/src/gtest_main.cc")
  benches=(matvec amx_bf16)
  srcs=("${lib_srcs[@]}" "${test_srcs[@]}")
  for b in "${benches[@]}"; do srcs+=("bench/bench_$b.cpp"); done
  mkdir -p "$dir/obj"
  compile_commands | xargs -d '\n' -P "$(nproc)" -I{} bash -c '{}'
  lib_objs=()
  for f in "${lib_srcs[@]}"; do lib_objs+=("$(object "$f")"); done
  test_objs=()
  for f in "${test_srcs[@]}"; do test_objs+=("$(object "$f")"); done
  g++ -fopenmp -pthread -o "$dir/kernel_tests" "${lib_objs[@]}" "${test_objs[@]}"
  for b in "${benches[@]}"; do
    g++ -fopenmp -pthread -o "$dir/bench_$b" "${lib_objs[@]}" "$(object "bench/bench_$b.cpp")"
  done
  echo "built $dir/kernel_tests and ${benches[*]/#/$dir/bench_}"
  exit 0
fi
[ "$mode" = build ] || { echo "error: mode must be prepare, build, kernel-tests or commands, got '$mode'" >&2; exit 2; }
mkdir -p "$dir/obj"
compile_commands | xargs -d '\n' -P "$(nproc)" -I{} bash -c '{}'
objs=()
for f in "${srcs[@]}"; do objs+=("$(object "$f")"); done
# libstdc++ is named before libtorch so that the dynamic linker finds the C++ library's symbols there
# first: libtorch.so exports its own std::filesystem::remove_all, and that copy jumps to address 0
# (a segmentation fault whenever the trainer or the RL loop deleted an old checkpoint).
# An RPATH (not RUNPATH: --disable-new-dtags) so that httplib finds the carried brotli libraries too.
g++ -fopenmp -o "$dir/crossmoe" "${objs[@]}" "$dir/lib/libpcre2-8.a" "$dir/lib/libutf8proc.a" \
  "$dir/lib/libcpp-httplib.so.0.11" -Wl,--disable-new-dtags -Wl,-rpath,"$dir/lib" "${cuda_link[@]}" \
  -L"$TORCH/lib" -Wl,-rpath,"$TORCH/lib" -Wl,--no-as-needed -lstdc++ -ltorch -ltorch_cuda -ltorch_cpu -lc10_cuda -lc10
echo "built $dir/crossmoe"
