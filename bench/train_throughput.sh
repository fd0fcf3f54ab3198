#!/usr/bin/env bash
# Training throughput of `crossmoe train` against the same model in plain PyTorch eager
# (bench/train_eager.py), one after the other on one device, like for like: the same initial
# weights (eager loads the --init model) and the same windows (`train --print-windows`), so both
# print the same losses (equal to float noise in f32 on a CPU: CliTrain.SameLossesAsPlainPyTorch;
# close in bf16 on a GPU).
#   bash bench/train_throughput.sh DATA_DIR [device] [peak TFLOP/s] [steps]
# The model: a ~50M-parameter layer-local MoE (8 layers, hidden 512, 8 experts of 384, top-2);
# SHAPE="--layout moe --hidden ..." replaces it (layer-local MoE or dense: what train_eager.py
# models). TRAIN_ARGS: more `crossmoe train` flags, e.g. "--expert-products padded" against the
# default's grouped products (docs/training.md). SIZES="16x512 32x1024" (the default): batch x
# sequence length of each round. COMPILE=1 adds the same model through torch.compile to each round.
set -euo pipefail
data=$1; device=${2:-cuda}; peak=${3:-989}; steps=${4:-60}
bin=${CROSSMOE_BIN:-./build/crossmoe}
tmp=$(mktemp -d)
tokenizer=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokenizer'])" "$data/meta.json")
read -r -a shape <<< "${SHAPE:---layout moe --hidden 512 --layers 8 --heads 8 --kv-heads 4 --head-dim 64 --experts 8 --top-k 2 --expert-size 384}"
read -r -a train_args <<< "${TRAIN_ARGS:-}"
"$bin" init "$tmp/model" "${shape[@]}" --tokenizer "$tokenizer" --dtype f32 >/dev/null 2>&1
"$bin" info "$tmp/model" | grep -i param || true
for size in ${SIZES:-16x512 32x1024}; do
  set -- ${size/x/ }
  echo "batch $1 x seq $2, $steps steps ($device)"
  "$bin" train --data "$data" --print-windows --steps "$steps" --batch "$1" --seq-len "$2" > "$tmp/windows-$1"
  "$bin" train --data "$data" -o "$tmp/run-$1" --init "$tmp/model" --steps "$steps" --batch "$1" --seq-len "$2" \
    --warmup 10 --log-every 10 --eval-every 0 --save-every 0 --device "$device" --peak-tflops "$peak" "${train_args[@]}" \
    2>/dev/null | grep crossmoe
  echo "crossmoe losses at steps 10, 20, ...: $(awk -F, 'NR > 1 {printf "%s ", $4}' "$tmp/run-$1/log.csv")"
  python3 bench/train_eager.py "$tmp/model/config.json" "$data" --steps "$steps" --batch "$1" --seq-len "$2" \
    --skip 10 --peak-tflops "$peak" --init "$tmp/model" --windows "$tmp/windows-$1" --log-every 10 |
    awk '/^step/ {l = l $4 " "} !/^step/ {print} END {print "eager losses at steps 10, 20, ...:    " l}'
  if [ "${COMPILE:-0}" = 1 ]; then
    python3 bench/train_eager.py "$tmp/model/config.json" "$data" --steps "$steps" --batch "$1" --seq-len "$2" \
      --skip 10 --peak-tflops "$peak" --init "$tmp/model" --windows "$tmp/windows-$1" --log-every 10 --compile |
      awk '/^step/ {l = l $4 " "} /^compiled/ {print} END {print "compiled losses at steps 10, 20, ...: " l}'
  fi
done
rm -rf "$tmp"
