#!/usr/bin/env bash
# GPU call 8: build, unpack the 50M-token corpus, launch the ReXMoE/Megrez2 experiment (21 runs) detached, then poll.
set -uo pipefail
start=$(date +%s)
E=/tmp/rx; C=/tmp/carry; D=/tmp/corpus
mkdir -p $E $D $OUT
[ -x $C/crossmoe ] || { rm -rf $C; cp -r .carry $C; bash scripts/gpu_box_build.sh build $C > $E/build.log 2>&1 || { tail -30 $E/build.log; exit 1; }; }
echo "built at $(( $(date +%s) - start )) s"
if [ ! -f $D/val.bin ]; then
  xz -dc -T0 .gpu/rexmoe/train.bin.xz > $D/train.bin & xz -dc -T0 .gpu/rexmoe/val.bin.xz > $D/val.bin; wait
  mkdir -p $D/tok; cp .gpu/rexmoe/tokenizer.json .gpu/rexmoe/tokenizer_config.json $D/tok/
  python3 -c "import json; m=json.load(open('.gpu/rexmoe/meta.json')); m['tokenizer']='$D/tok/tokenizer.json'; json.dump(m, open('$D/meta.json','w'), indent=1)"
  (cd $D && sha256sum train.bin val.bin); cat .gpu/rexmoe/sha256.txt
fi
echo "data at $(( $(date +%s) - start )) s"; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
# MPS lets the small runs' kernels share the GPU at once instead of taking turns; left off if it does not work.
if [ ! -f $E/mps-tried ]; then
  touch $E/mps-tried; export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p /tmp/mps /tmp/mps-log
  if nvidia-cuda-mps-control -d && python3 -c "import torch; x=torch.ones(1000,1000,device='cuda'); print('mps check', float((x@x).sum()))"; then touch $E/mps-on; echo "MPS on"
  else echo quit | nvidia-cuda-mps-control; echo "MPS off"; fi
fi
[ -f $E/mps-on ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
# Detached (setsid), so the runs go on between device calls; the next calls poll.
export OMP_NUM_THREADS=2 CROSSMOE_BIN=$C/crossmoe
if [ ! -f $E/launched ]; then
  cp scripts/rexmoe_experiment.sh $E/  # a private copy: the checkout is refreshed by each device call
  touch $E/launched
  TOKENS=33e6 BATCH=64 SEQ_LEN=512 PER_GPU=${PER_GPU:-11} SAVE_EVERY=200 setsid bash -c "bash $E/rexmoe_experiment.sh $D $E/out > $E/experiment.log 2>&1; touch $E/done" < /dev/null &
  # Determinism: the first 200 steps of local seed 1 again, beside the experiment.
  TOKENS=33e6 BATCH=64 SEQ_LEN=512 RUNS=local SEEDS=1 STOP_AFTER=200 SAVE_EVERY=200 setsid bash -c "bash $E/rexmoe_experiment.sh $D $E/rerun > $E/rerun.log 2>&1" < /dev/null &
fi
POLL_START=$start bash .gpuexp/poll.sh
