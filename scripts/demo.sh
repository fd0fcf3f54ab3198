#!/usr/bin/env bash
# The main job on a small default model: set up, train a BPE tokenizer on real English (the
# Brown corpus), create a Megrez2-layout model with it (cross-layer shared expert pool,
# pre-gated routing), show it, generate from it and benchmark it. The model's weights are random
# until the trainer issue lands, so the text is not meaningful yet; everything else is real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=${1:-build/demo-model}
./build/crossmoe tokenizer train build/text/english.txt --vocab-size 4096 -o build/demo-tokenizer
./build/crossmoe init "$model" --layout megrez2 --hidden 512 --layers 8 --experts 32 --top-k 4 \
  --expert-size 256 --shared-size 256 --heads 8 --kv-heads 4 --head-dim 64 --intermediate 1536 \
  --tokenizer build/demo-tokenizer/tokenizer.json --force
./build/crossmoe info "$model"
echo
./build/crossmoe generate "$model" -p "The experts of adjacent layers" -n 48 --temperature 0.8 --seed 1
echo
./build/crossmoe bench "$model" --runs 3
