#!/usr/bin/env bash
# The ReXMoE claim at small scale, and Megrez2 sharing against layer-local (docs/experiments.md).
# Every run: same data, tokens, optimizer and schedule; 8 MoE layers with E = 8 experts of 256 per
# layer (or per shared pool), top-2, hidden 256; only the cross-layer layout differs.
#   bash scripts/rexmoe_experiment.sh DATA_DIR OUT_DIR [steps] [gpus] [runs per gpu] [seeds]
# Runs go to GPUs round-robin, several at a time per GPU; a summary table is printed at the end.
set -euo pipefail
data=$1; out=$2; steps=${3:-1000}; gpus=${4:-1}; per_gpu=${5:-2}; seeds=${6:-"1 2"}
bin=${CROSSMOE_BIN:-./build/crossmoe}
mkdir -p "$out"
base=(--hidden 256 --layers 8 --heads 4 --kv-heads 2 --head-dim 64 --experts 8 --top-k 2 --expert-size 256
      --shared-size 0 --first-dense 0 --scoring softmax)
train=(--steps "$steps" --batch "${BATCH:-32}" --seq-len 256 --lr 3e-3 --warmup $((steps / 20)) --eval-every $((steps / 10))
       --eval-batches "${EVAL_BATCHES:-20}" --save-every 0 --log-every 20 --device "${DEVICE:-cuda}")
psr=(--psr-start $((steps / 10)) --psr-end $((steps / 2)))
declare -A runs=(
  [local]="--layout moe"
  [rexmoe_r2]="--layout rexmoe --group-size 2"
  [rexmoe_r4]="--layout rexmoe --group-size 4"
  [rexmoe_r4_psr]="--layout rexmoe --group-size 4 ${psr[*]}"
  [rexmoe_r8_psr]="--layout rexmoe --group-size 8 ${psr[*]}"
  [megrez2_r3]="--layout megrez2 --group-size 3 --pre-gate off"
  [megrez2_r3_pregate]="--layout megrez2 --group-size 3 --pre-gate on"
)
order=(local rexmoe_r2 rexmoe_r4 rexmoe_r4_psr rexmoe_r8_psr megrez2_r3 megrez2_r3_pregate)
slot=0; pids=()
for name in "${order[@]}"; do
  for seed in $seeds; do
    dir="$out/$name-seed$seed"
    rm -rf "$dir"
    gpu=$((slot % gpus)); slot=$((slot + 1))
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu "$bin" train --data "$data" -o "$dir" "${base[@]}" ${runs[$name]} "${train[@]}" \
      --seed "$seed" > "$dir.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge $((gpus * per_gpu)) ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
wait
python3 - "$out" "${order[@]}" <<'PY'
import csv, math, re, sys, glob, statistics
out, names = sys.argv[1], sys.argv[2:]
print(f"| run | stored params | active params | val ppl (per seed) | mean val ppl | tokens/s |")
print("|---|---|---|---|---|---|")
for n in names:
    ppls, tps, stored, active = [], [], "?", "?"
    for log in sorted(glob.glob(f"{out}/{n}-seed*.log")):
        m = re.search(r"(\d+) parameters, (\d+) active", open(log).read())
        if m: stored, active = f"{int(m.group(1))/1e6:.2f}M", f"{int(m.group(2))/1e6:.2f}M"
        rows = [r for r in csv.DictReader(open(log[:-4] + "/log.csv")) if r["val_loss"]]
        if rows:
            ppls.append(math.exp(float(rows[-1]["val_loss"]))); tps.append(float(rows[-1]["tokens_per_s"]))
    if ppls:
        print(f"| {n} | {stored} | {active} | {' / '.join(f'{p:.2f}' for p in ppls)} | {statistics.mean(ppls):.2f} | {statistics.mean(tps):.0f} |")
PY
