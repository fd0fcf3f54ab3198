#!/usr/bin/env bash
# Long fuzz runs of every reader of untrusted input (docs/robustness.md), SECONDS per target.
#   bash scripts/fuzz.sh [SECONDS]                 # g++ build: the bounded mutation loop (build/tests/fuzz_*)
#   LIBFUZZER=1 bash scripts/fuzz.sh [SECONDS]     # clang: coverage-guided libFuzzer, built in build-fuzz/
# Each target starts from its seed files (listed in build*/tests/fuzz_<reader>.seeds by CMake).
# A failing input is left in the working directory (fuzz-failure-<reader>.bin, or libFuzzer's
# crash-*/timeout-*/oom-* files) to replay with the target.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
readers=(config generation_config tokenizer lveval_jsonl cfr_policy checkpoint_state)
if [ -n "${LIBFUZZER:-}" ]; then
  build=build-fuzz
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DCROSSMOE_LIBFUZZER=ON \
    -DCROSSMOE_TRAINER=OFF >/dev/null
else
  build=build
fi
cmake --build "$build" -j2 --target "${readers[@]/#/fuzz_}" >/dev/null
for reader in "${readers[@]}"; do
  mapfile -t seeds <"$build/tests/fuzz_$reader.seeds"
  if [ -n "${LIBFUZZER:-}" ]; then
    corpus="$build/fuzz-corpus/$reader"
    mkdir -p "$corpus"
    for s in "${seeds[@]}"; do
      if [ -d "$s" ]; then cp "$s"/* "$corpus"/; else cp "$s" "$corpus"/; fi
    done
    "$build/tests/fuzz_$reader" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      "$corpus" 2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)|ERROR|SUMMARY" |
      sed "s/^/$reader: /"
  else
    "$build/tests/fuzz_$reader" --iterations 1000000000 --seconds "$seconds" --timeout 20 "${seeds[@]}"
  fi
done
