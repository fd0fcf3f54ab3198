#!/usr/bin/env bash
# The benchmark models of docs/benchmarks.md: a tiny model and a Megrez2-shaped one (the real
# hidden size 2048, expert size 1408, 64 experts per pool, top-6, 4 x 1408 shared, vocab
# 128,880, layer 0 dense with FFN 10944) with 4 layers instead of 31 so it fits this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-models}
./build/crossmoe init "$out/tiny" --layout megrez2 --force
./build/crossmoe init "$out/megrez2-4l" --layout megrez2 --vocab 128880 --hidden 2048 --layers 4 \
  --heads 16 --kv-heads 4 --head-dim 128 --intermediate 10944 --experts 64 --top-k 6 \
  --expert-size 1408 --shared-size 5632 --force
for m in tiny megrez2-4l; do
  ./build/crossmoe info "$out/$m"
  ./build/crossmoe bench "$out/$m" --runs 5 --prompt-tokens 128 --gen-tokens 32
done
./build/bench_matvec
