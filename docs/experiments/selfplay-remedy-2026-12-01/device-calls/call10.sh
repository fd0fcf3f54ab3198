#!/usr/bin/env bash
# GPU call 10 (issue 16): build; (1) recovery from seed 2's Kuhn collapse: its final policy continued for
# 10 iterations with the SFT model as KL reference, with no remedy, --sft-mix 0.1 / 1, --kl-coef 1;
# (2) seed 2 again from SFT with --sft-mix 0.1 (does mixing keep the gains?); (3) transfer: pretrain,
# a warm start that also holds random-player transcripts of Connect Four and Leduc, SFT, eval, 20 iterations
# of self-play, eval. All detached (setsid); the call polls, then packs logs.
set -uo pipefail
start=$(date +%s)
E=/tmp/e; C=/tmp/carry
mkdir -p $E $OUT
[ -x $C/crossmoe ] || { rm -rf $C; cp -r .carry $C; bash scripts/gpu_box_build.sh build $C > $E/build.log 2>&1 || { tail -30 $E/build.log; exit 1; }; }
echo "built at $(( $(date +%s) - start )) s"
for m in collapsed sft; do
  [ -f $E/models/$m/model.safetensors ] && continue
  mkdir -p $E/models/$m; cp .gpu/rl16/$m/*.json $E/models/$m/; xz -dc -T0 .gpu/rl16/$m/model.safetensors.xz > $E/models/$m/model.safetensors
done
sha256sum $E/models/*/model.safetensors; cat .gpu/rl16/sha256.txt
if [ ! -f $E/mps-tried ]; then
  touch $E/mps-tried; export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p /tmp/mps /tmp/mps-log
  if nvidia-cuda-mps-control -d && python3 -c "import torch; x=torch.ones(1000,1000,device='cuda'); print('mps check', float((x@x).sum()))"; then touch $E/mps-on; echo "MPS on"
  else echo quit | nvidia-cuda-mps-control; echo "MPS off"; fi
fi
[ -f $E/mps-on ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
export OMP_NUM_THREADS=2
B=$C/crossmoe
if [ ! -f $E/launched ]; then
  touch $E/launched
  cp scripts/rl_experiment.sh $E/
  # The third run's warm-start conversations again (same seed and mix), for --sft-mix.
  WARM_START=mixed SEED=1 bash $E/rl_experiment.sh $B $C/data $E/mixed transcripts > $E/transcripts.log 2>&1
  echo "transcripts at $(( $(date +%s) - start )) s: $(wc -l < $E/mixed/sft.jsonl) conversations"
  common="--game tic_tac_toe,kuhn_poker,mini_hanabi --games-per-iteration 64 --max-new-tokens 256 --max-sequence 4096 --lr 2e-5 --eval-games 16 --update-experts dense --device cuda --threads 2"
  rec() {  # name extra-args
    setsid bash -c "$B rl selfplay $E/models/collapsed -o $E/rec-$1 --reference $E/models/sft --iterations 10 --seed 2 $common $2 > $E/rec-$1.log 2>&1; touch $E/rec-$1.done" < /dev/null &
  }
  rec none ""
  rec mix01 "--sft-mix $E/mixed/sft.jsonl --sft-mix-coef 0.1"
  rec mix1 "--sft-mix $E/mixed/sft.jsonl --sft-mix-coef 1"
  rec kl1 "--kl-coef 1"
  setsid bash -c "$B rl selfplay $E/models/sft -o $E/seed2-mix01 --iterations 20 --seed 2 $common --sft-mix $E/mixed/sft.jsonl --sft-mix-coef 0.1 > $E/seed2-mix01.log 2>&1; touch $E/seed2-mix01.done" < /dev/null &
  # Transfer: the whole pipeline with Connect Four and Leduc protocol transcripts in the warm start.
  setsid bash -c "export WARM_START=mixed SEED=1 FORMAT_GAMES='connect_four:600 leduc_poker:600' EVAL_GAMES=40 SELFPLAY_ITERATIONS=20 SELFPLAY_LR=2e-5 SELFPLAY_ARGS='--update-experts dense --threads 2'
    bash $E/rl_experiment.sh $B $C/data $E/transfer pretrain transcripts sft > $E/transfer.log 2>&1 || exit 1
    bash $E/rl_experiment.sh $B $C/data $E/transfer eval-sft >> $E/transfer-eval.log 2>&1 &
    bash $E/rl_experiment.sh $B $C/data $E/transfer selfplay >> $E/transfer.log 2>&1; wait
    bash $E/rl_experiment.sh $B $C/data $E/transfer eval-selfplay >> $E/transfer-eval.log 2>&1; touch $E/transfer.done" < /dev/null &
fi
POLL_START=$start bash .gpuexp/poll10.sh
