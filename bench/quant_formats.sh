#!/usr/bin/env bash
# Decode and prefill of one dense model (hidden 2048, FFN 5632, 4 layers, vocab 32000: 623 MB in
# bf16, 138 MB of Q4_K read per token, many times this machine's 32 MiB L3) in bf16, Q8_0 and
# Q4_K, timed side by side in one process: bench_quant lets the formats take turns every round
# and takes each round's ratio against bf16. Models already made in DIR are reused.
# Usage: bash bench/quant_formats.sh [DIR] [ROUNDS]      results: docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-models}
rounds=${2:-5}
dense=$out/dense-2048
[ -d "$dense" ] || ./build/crossmoe init "$dense" --layout dense --vocab 32000 --hidden 2048 --layers 4 --heads 16 \
  --kv-heads 4 --head-dim 128 --intermediate 5632
for t in q8_0 q4_k; do
  [ -d "$dense-$t" ] || ./build/crossmoe quantize "$dense" "$dense-$t" --type "$t"
done
lscpu | grep -E 'Model name|L3'
uptime  # the load of other users' processes on this shared machine
./build/bench_quant --rounds "$rounds" "$dense" "$dense-q8_0" "$dense-q4_k"
