#!/usr/bin/env bash
# The expert cache's tests (tests/test_expert_cache.cpp) under ThreadSanitizer: builds the sources
# they need, and only those, with -fsanitize=thread into build-tsan/ (make -j2, objects kept between
# runs), then runs them. OMP_NUM_THREADS=1 by default: TSan cannot see libgomp's barriers, so an
# OpenMP region (write_random_model) reports false races; the cache's I/O threads, the sessions'
# threads and the file-cutting thread of the tests are all still there.
#   bash scripts/tsan_expert_cache.sh [GTEST_FILTER]      (default 'ExpertCache*:CacheSim*')
#   CROSSMOE_CACHE_STRESS=full bash scripts/tsan_expert_cache.sh 'ExpertCacheStress.*'
# Results: docs/robustness.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build-tsan
mkdir -p "$out"
sources="util/error util/regular_file util/progress util/dtype util/quant util/json_file
  model/config model/hf_config model/tensor_names model/safetensors model/checkpoint model/gguf model/gguf_model
  model/init model/rope kernels/dispatch kernels/ops kernels/bandwidth kernels/thread_pool kernels/matmul_generic
  kernels/matmul_avx2 kernels/matmul_avx512 kernels/matmul_avx512_vnni kernels/matmul_avx512_bf16 kernels/matmul_amx
  runtime/weights runtime/expert_cache runtime/cache_sim runtime/routing runtime/kv_pool runtime/forward runtime/sampler"
avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c"
{
  echo "FLAGS = -std=c++20 -fsanitize=thread -O1 -g -fopenmp -MMD -I$root/src -I$root/tests"
  echo "OBJ ="
  for s in $sources; do
    case $s in
      kernels/matmul_generic) isa="-ffp-contract=off" ;;
      kernels/matmul_avx2) isa="-mavx2 -mfma -mf16c -ffp-contract=off" ;;
      kernels/matmul_avx512) isa="$avx512 -ffp-contract=off" ;;
      kernels/matmul_avx512_vnni) isa="$avx512 -mavx512vnni -ffp-contract=off" ;;
      kernels/matmul_avx512_bf16) isa="$avx512 -mavx512bf16 -ffp-contract=off" ;;
      kernels/matmul_amx) isa="$avx512 -mavx512vnni -mamx-tile -mamx-int8 -ffp-contract=off" ;;
      *) isa="" ;;
    esac
    o=obj/${s//\//_}.o
    echo "OBJ += $o"
    printf '%s: %s\n\tg++ $(FLAGS) %s -c $< -o $@\n' "$o" "$root/src/$s.cpp" "$isa"
  done
  echo "OBJ += obj/test_expert_cache.o"
  printf 'obj/test_expert_cache.o: %s\n\tg++ $(FLAGS) -c $< -o $@\n' "$root/tests/test_expert_cache.cpp"
  printf 'tsan_tests: $(OBJ)\n\tg++ $(FLAGS) -o $@ $^ -lgtest_main -lgtest -lpthread\n'
  echo "-include obj/*.d"
} > "$out/Makefile"
mkdir -p "$out/obj"
nice make -C "$out" -j2 -s tsan_tests
TSAN_OPTIONS=${TSAN_OPTIONS:-second_deadlock_stack=1} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
  "$out/tsan_tests" --gtest_filter="${1:-ExpertCache*:CacheSim*}"
