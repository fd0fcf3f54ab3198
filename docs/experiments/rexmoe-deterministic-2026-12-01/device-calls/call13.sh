#!/usr/bin/env bash
# GPU call 13 (issue 19): the determinism check only, beside call 11's self-play runs: layer-local
# seed 1 with --deterministic, 200 steps of 64 x 512, twice at once; logs must be equal.
# carry: .gpu/rexmoe .gpuexp/call13.sh (the build is call 11's, in /tmp/carry)
set -uo pipefail
start=$(date +%s)
E=/tmp/rx3; C=/tmp/carry; D=/tmp/corpus
mkdir -p $E $D $OUT
[ -x $C/crossmoe ] || { echo "no build in $C (call 11 builds it)"; exit 1; }
if [ ! -f $D/val.bin ]; then
  xz -dc -T0 .gpu/rexmoe/train.bin.xz > $D/train.bin & xz -dc -T0 .gpu/rexmoe/val.bin.xz > $D/val.bin; wait
  mkdir -p $D/tok; cp .gpu/rexmoe/tokenizer.json .gpu/rexmoe/tokenizer_config.json $D/tok/
  python3 -c "import json; m=json.load(open('.gpu/rexmoe/meta.json')); m['tokenizer']='$D/tok/tokenizer.json'; json.dump(m, open('$D/meta.json','w'), indent=1)"
  (cd $D && sha256sum train.bin val.bin); cat .gpu/rexmoe/sha256.txt
fi
[ -f /tmp/e11/mps-on ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
export OMP_NUM_THREADS=2 CROSSMOE_BIN=$C/crossmoe PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ ! -f $E/launched ]; then
  touch $E/launched; cp scripts/rexmoe_experiment.sh $E/
  for k in 1 2; do
    TOKENS=33e6 BATCH=64 SEQ_LEN=512 RUNS=local SEEDS=1 STOP_AFTER=200 SAVE_EVERY=200 TRAIN_ARGS=--deterministic \
      setsid bash -c "bash $E/rexmoe_experiment.sh $D $E/det$k > $E/det$k.log 2>&1; touch $E/det$k.done" < /dev/null &
  done
fi
limit=${POLL_LIMIT:-540}
while [ ! -f $E/det1.done -o ! -f $E/det2.done ] && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 15; done
for l in $E/det*/*.log $E/det*.log; do printf '%s: ' "$l"; tr '\r' '\n' < $l | grep -v '^$' | tail -1 | cut -c1-200; done
if [ -f $E/det1.done ] && [ -f $E/det2.done ]; then
  cmp <(cut -d, -f1-7 $E/det1/local-seed1/log.csv) <(cut -d, -f1-7 $E/det2/local-seed1/log.csv) && echo "deterministic: equal logs" || echo "deterministic: logs DIFFER"
  cd $E && tar czf $OUT/det.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' det1 det2 *.log
fi
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
ls -la $OUT
