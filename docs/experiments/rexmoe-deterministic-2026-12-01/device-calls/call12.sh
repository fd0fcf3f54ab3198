#!/usr/bin/env bash
# GPU call 12 (issue 19, next session): under the new validation windows (spread over the held-out
# tokens), layer-local, ReXMoE r=4 and r=4 with per-token PSR masks, 3 seeds each, 33M tokens
# (as the 2026-12-01 round), plus the determinism check: local seed 1 with --deterministic, 200 steps,
# twice (logs must be equal) -- moved to call 13; this round now runs with --deterministic, 3 at a time beside call 11. Detached under MPS; rerun the call to poll; results in $OUT.
# carry: .carry (build, no data) .gpu/rexmoe .gpuexp/call12.sh
set -uo pipefail
start=$(date +%s)
E=/tmp/rx2; C=/tmp/carry; D=/tmp/corpus
mkdir -p $E $D $OUT
[ -x $C/crossmoe ] || { rm -rf $C; cp -r .carry $C; bash scripts/gpu_box_build.sh build $C > $E/build.log 2>&1 || { tail -30 $E/build.log; exit 1; }; }
echo "built at $(( $(date +%s) - start )) s"
if [ ! -f $D/val.bin ]; then
  xz -dc -T0 .gpu/rexmoe/train.bin.xz > $D/train.bin & xz -dc -T0 .gpu/rexmoe/val.bin.xz > $D/val.bin; wait
  mkdir -p $D/tok; cp .gpu/rexmoe/tokenizer.json .gpu/rexmoe/tokenizer_config.json $D/tok/
  python3 -c "import json; m=json.load(open('.gpu/rexmoe/meta.json')); m['tokenizer']='$D/tok/tokenizer.json'; json.dump(m, open('$D/meta.json','w'), indent=1)"
  (cd $D && sha256sum train.bin val.bin); cat .gpu/rexmoe/sha256.txt
fi
if [ ! -f /tmp/mps-on ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p /tmp/mps /tmp/mps-log
  nvidia-cuda-mps-control -d && touch /tmp/mps-on
fi
[ -f /tmp/mps-on ] && export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
export OMP_NUM_THREADS=2 CROSSMOE_BIN=$C/crossmoe PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ ! -f $E/launched ]; then
  touch $E/launched; cp scripts/rexmoe_experiment.sh $E/
  TOKENS=33e6 BATCH=64 SEQ_LEN=512 PER_GPU=${PER_GPU:-3} SAVE_EVERY=200 RUNS="local rexmoe_r4 rexmoe_r4_psr_token" TRAIN_ARGS=--deterministic \
    setsid bash -c "bash $E/rexmoe_experiment.sh $D $E/out > $E/experiment.log 2>&1; touch $E/done" < /dev/null &
fi
limit=${POLL_LIMIT:-540}
while [ ! -f $E/done ] && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 20; done
for l in $E/out/*.log $E/det*/*.log; do printf '%s: ' "$(basename $l)"; tr '\r' '\n' < $l | grep -v '^$' | tail -1 | cut -c1-160; done
cd $E && tar czf $OUT/rexmoe2.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' out *.log 2>/dev/null
ls -la $OUT
