#!/usr/bin/env bash
# The main job on a small default model, in a few minutes on a laptop-class CPU: set up, train a
# BPE tokenizer on real English (the Brown corpus), pre-train a small Megrez2-layout model on it
# (cross-layer shared expert pool, pre-gated sigmoid routing, a shared expert), then generate from
# the trained model, benchmark it with the inference runtime and run a small LV-Eval on it
# (factrecall needles in 1k-word Brown text, 4 samples). Everything is the real path:
# the runtime loads the Hugging Face directory the trainer exported.
#   bash scripts/demo.sh [OUT_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-build/demo}
steps=${2:-300}
./build/crossmoe tokenizer train build/text/english.txt --vocab-size 4096 -o "$out/tokenizer" --force
./build/crossmoe data prepare --tokenizer "$out/tokenizer/tokenizer.json" -o "$out/data" --force
rm -rf "$out/run"
./build/crossmoe train --data "$out/data" -o "$out/run" --layout megrez2 --layers 4 --hidden 192 --heads 6 \
  --kv-heads 2 --head-dim 32 --intermediate 512 --experts 8 --top-k 2 --expert-size 128 --shared-size 128 \
  --steps "$steps" --batch 16 --seq-len 128 --lr 3e-3 --warmup 30 --eval-every 50 --save-every 100
echo "training log: $out/run/log.csv, loss curve: $out/run/loss.svg"
model=$out/run/model
./build/crossmoe info "$model"
echo
./build/crossmoe generate "$model" -p "The jury said that the" -n 48 --temperature 0.7 --top-p 0.9 --seed 1
echo
./build/crossmoe bench "$model" --runs 3
echo
./build/crossmoe eval generate --text build/text/english.txt -o "$out/lveval-data" --length 1000 -n 4
rm -rf "$out/lveval"
./build/crossmoe eval lveval "$model" --data "$out/lveval-data" -o "$out/lveval"
