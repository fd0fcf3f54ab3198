#!/usr/bin/env bash
# GPU call 7: training throughput per layout of the ReXMoE/Megrez2 experiment (vocab 16384 corpus slice), alone and 7 at once.
set -uo pipefail
start=$(date +%s)
E=/tmp/exp; C=/tmp/carry; T=/tmp/tp; D=.gpu/corpus-slice
mkdir -p $E $OUT $T
[ -x $C/crossmoe ] || { rm -rf $C; cp -r .carry $C; bash scripts/gpu_box_build.sh build $C > $E/build.log 2>&1 || { tail -30 $E/build.log; exit 1; }; }
echo "built at $(( $(date +%s) - start )) s"; nvidia-smi --query-gpu=name,utilization.gpu --format=csv
base="--hidden 256 --layers 8 --heads 4 --kv-heads 2 --head-dim 64 --experts 8 --top-k 2 --expert-size 256 --shared-size 0 --first-dense 0 --scoring softmax --lr 3e-3 --warmup 5 --eval-every 0 --eval-batches 2 --save-every 0 --log-every 10 --device cuda --seed 1"
declare -A L=([local]="--layout moe" [rexmoe_r2]="--layout rexmoe --group-size 2" [rexmoe_r4]="--layout rexmoe --group-size 4"
  [rexmoe_r8]="--layout rexmoe --group-size 8" [megrez2_r3]="--layout megrez2 --group-size 3 --pre-gate off" [megrez2_r3_pregate]="--layout megrez2 --group-size 3 --pre-gate on")
order="local rexmoe_r2 rexmoe_r4 rexmoe_r8 megrez2_r3 megrez2_r3_pregate"
tps() { python3 -c "import csv,sys; r=list(csv.DictReader(open('$1/log.csv'))); print(f\"{float(r[-1]['tokens_per_s']):.0f}\")"; }
for shape in "32 256" "64 512" "128 512"; do
  set -- $shape
  for n in $order; do
    [ $(( $(date +%s) - start )) -lt ${BUDGET:-540} ] || break 2
    d=$T/$n-$1x$2; rm -rf $d
    $C/crossmoe train --data $D -o $d $base ${L[$n]} --steps 40 --batch $1 --seq-len $2 > $d.log 2>&1 || { tail -3 $d.log; continue; }
    echo "alone $n ${1}x$2 tok/s $(tps $d)  $(grep -o '[0-9]* parameters, [0-9]* active' $d.log | head -1)"
  done
done
# Seven runs at once (the experiment's packing), 32x256, 120 steps each.
pids=()
for n in $order rexmoe_r4; do d=$T/par-$n-$RANDOM; $C/crossmoe train --data $D -o $d $base ${L[$n]} --steps 120 --batch 32 --seq-len 256 > $d.log 2>&1 & pids+=($!); done
wait
tot=0; for d in $T/par-*/; do v=$(tps $d); echo "together $(basename $d) $v"; tot=$((tot + v)); done; echo "together total tok/s $tot"
echo "done at $(( $(date +%s) - start )) s"
