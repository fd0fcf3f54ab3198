#!/usr/bin/env bash
# GPU call 11 (issue 16, next session): the ablations at full length and three seeds, from the fourth
# run's SFT model: --no-seat-norm seeds 1-3 and --no-turn-scores seeds 2-3 (seed 1 is in the fifth run),
# 20 iterations each, --update-experts dense, 4 at once under MPS (5 at ~25 GB each nearly fill the H200),
# then `games eval` 40 a row, seed 7. Detached; rerun the call to poll (POLL_LIMIT), results in $OUT.
# carry: .carry (build, no data) .gpu/rl16/sft .gpuexp/call11.sh
set -uo pipefail
start=$(date +%s)
E=/tmp/e11; C=/tmp/carry
mkdir -p $E $OUT
[ -x $C/crossmoe ] || { rm -rf $C; cp -r .carry $C; bash scripts/gpu_box_build.sh build $C > $E/build.log 2>&1 || { tail -30 $E/build.log; exit 1; }; }
echo "built at $(( $(date +%s) - start )) s"
if [ ! -f $E/sft/model/model.safetensors ]; then
  mkdir -p $E/sft/model; cp .gpu/rl16/sft/*.json $E/sft/model/; xz -dc -T0 .gpu/rl16/sft/model.safetensors.xz > $E/sft/model/model.safetensors
  sha256sum $E/sft/model/model.safetensors; grep sft-model .gpu/rl16/sha256.txt
fi
if [ ! -f $E/mps-tried ]; then
  touch $E/mps-tried; export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p /tmp/mps /tmp/mps-log
  nvidia-cuda-mps-control -d && touch $E/mps-on
fi
[ -f $E/mps-on ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
export OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ ! -f $E/launched ]; then
  touch $E/launched; cp scripts/rl_experiment.sh $E/
  setsid bash -c "
    run() { SEED=\$1 SELFPLAY_NAME=\$2 SELFPLAY_ITERATIONS=20 SELFPLAY_LR=2e-5 SELFPLAY_ARGS=\"--update-experts dense --threads 2 \$3\" \
      bash $E/rl_experiment.sh $C/crossmoe none $E selfplay > $E/\$2.log 2>&1
      $C/crossmoe games eval $E/\$2/model --device cuda -n 40 --seed 7 -o $E/\$2/eval.md --json > $E/\$2/eval.json 2>> $E/\$2.log
      touch $E/\$2.done; }
    run 1 no_seat_norm_s1 --no-seat-norm & run 2 no_seat_norm_s2 --no-seat-norm & run 3 no_seat_norm_s3 --no-seat-norm &
    run 2 no_turn_scores_s2 --no-turn-scores; run 3 no_turn_scores_s3 --no-turn-scores; wait" < /dev/null > $E/launcher.log 2>&1 &
fi
limit=${POLL_LIMIT:-540}
while [ $(ls $E/*.done 2>/dev/null | wc -l) -lt 5 ] && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 15; done
for l in $E/*.log; do printf '%s: ' "$(basename $l)"; tr '\r' '\n' < $l | grep -v '^$' | tail -1 | cut -c1-200; done
cd $E && tar czf $OUT/ablations.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' $(ls -d no_* *.log 2>/dev/null)
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv; ls -la $OUT
