#!/usr/bin/env bash
# Issue 18's measurements on several GPUs of one host (the 2-GPU machine), or on CPU ranks with Gloo
# to try the script anywhere:
#   bash bench/train_scaling.sh DATA_DIR [device] [nproc] [peak TFLOP/s] [steps] [TEXT_FILE]
# 1. Data parallelism: the same model, seed and global batch on 1 rank and on N; losses side by side
#    (the global batch is the same, so the curves follow each other) and tokens/s with the ratio.
# 2. Tensor (--tp N) and expert (--ep N) parallelism on the Megrez2 shape: tokens/s and the share
#    of the time in communication (log.csv's comm_s over the logged window's seconds; what comm_s
#    counts, and on NCCL what it cannot see, is in docs/training.md).
# 3. A checkpoint written by N ranks under --ep N (stopped halfway), resumed on 1 rank to the end,
#    beside the uninterrupted N-rank run: losses side by side, and both exports' perplexity in the
#    CPU runtime on TEXT_FILE (default: the data's tokenizer.json as text, anything will do).
# SHAPE / DP_SHAPE: model flags (defaults below: a Megrez2 shape, and a dense model that fills a GPU).
# SIZE: batch x sequence length (default 32x1024 on cuda, 8x64 on cpu).
set -euo pipefail
data=$1; device=${2:-cuda}; n=${3:-2}; peak=${4:-989}; steps=${5:-40}
bin=${CROSSMOE_BIN:-./build/crossmoe}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
text=${6:-$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['tokenizer'])" "$data/meta.json")}
if [ "$device" = cpu ]; then
  size=${SIZE:-8x64}
  dp_shape=${DP_SHAPE:---layout dense --hidden 64 --layers 2 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128}
  shape=${SHAPE:---layout megrez2 --hidden 64 --layers 3 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 --experts 4 --top-k 2 --expert-size 32 --shared-size 32}
else
  size=${SIZE:-32x1024}
  dp_shape=${DP_SHAPE:---layout dense --hidden 2048 --layers 16 --heads 16 --kv-heads 4 --head-dim 128 --intermediate 5632}
  shape=${SHAPE:---layout megrez2 --hidden 1024 --layers 12 --heads 16 --kv-heads 4 --head-dim 64 --intermediate 4096 --experts 16 --top-k 4 --expert-size 512 --shared-size 1024}
fi
set -- ${size/x/ }; batch=$1; seq=$2
common="--data $data --steps $steps --batch $batch --seq-len $seq --warmup 10 --log-every 10 --eval-every 0 --save-every 0 --seed 1 --device $device --peak-tflops $peak"
# Mean tokens/s and MFU of the logged rows after the first (warm-up) one; "tokens/s" alone for ratios.
summary() {
  awk -F, 'NR == 1 {for (i = 1; i <= NF; ++i) c[$i] = i; next}
           NR > 2 {t += $c["tokens_per_s"]; m += $c["mfu"]; k++}
           END {if (k) printf "%.0f tokens/s, MFU %.1f%%", t / k, 100 * m / k}' "$1/log.csv"
}
losses() { awk -F, 'NR > 1 {printf "%s ", $4}' "$1/log.csv"; }
# comm_s of a row over the seconds of its window (its tokens since the previous row / tokens_per_s).
comm_share() {
  awk -F, 'NR == 1 {for (i = 1; i <= NF; ++i) c[$i] = i; next}
           {w = ($c["tokens"] - prev) / $c["tokens_per_s"]; prev = $c["tokens"]}
           NR > 2 {s += $c["comm_s"]; total += w}
           END {if (total > 0) printf "%.1f%% of the time in collectives", 100 * s / total}' "$1/log.csv"
}
run() { local out=$1; shift; "$bin" train -o "$tmp/$out" "$@" > "$tmp/$out.log" 2>&1 || { tail -5 "$tmp/$out.log"; exit 1; }; }

echo "== data parallelism, $batch x $seq, $steps steps ($device): 1 rank vs $n"
run dp1 $dp_shape $common
run dpn $dp_shape $common --nproc "$n"
echo "1 rank:  $(summary "$tmp/dp1")"
echo "$n ranks: $(summary "$tmp/dpn") ($(comm_share "$tmp/dpn"))"
echo "$n ranks / 1 rank: $(summary "$tmp/dpn" | cut -d' ' -f1) / $(summary "$tmp/dp1" | cut -d' ' -f1)" | awk '{printf "%s %.2fx\n", $0, $(NF-2) / $NF}'
echo "losses, 1 rank:  $(losses "$tmp/dp1")"
echo "losses, $n ranks: $(losses "$tmp/dpn")"

echo "== Megrez2 shape, $n ranks: tensor and expert parallelism"
run tp $shape $common --nproc "$n" --tp "$n"
run ep $shape $common --nproc "$n" --ep "$n"
echo "--tp $n: $(summary "$tmp/tp") ($(comm_share "$tmp/tp")); losses $(losses "$tmp/tp")"
echo "--ep $n: $(summary "$tmp/ep") ($(comm_share "$tmp/ep")); losses $(losses "$tmp/ep")"

echo "== a checkpoint of $n ranks under --ep $n, resumed on 1 rank"
run ep_half $shape ${common/--save-every 0/--save-every $((steps / 2))} --nproc "$n" --ep "$n" --stop-after $((steps / 2))
"$bin" train -o "$tmp/ep_half" --resume > "$tmp/ep_resume.log" 2>&1 || { tail -5 "$tmp/ep_resume.log"; exit 1; }
echo "losses, $n ranks throughout:       $(losses "$tmp/ep")"
echo "losses, resumed on 1 rank halfway: $(losses "$tmp/ep_half")"
for run_dir in ep ep_half; do
  echo "$run_dir export in the CPU runtime: $("$bin" perplexity "$tmp/$run_dir/model" "$text" -c 256 --chunks 4 2>/dev/null | grep perplexity)"
done
