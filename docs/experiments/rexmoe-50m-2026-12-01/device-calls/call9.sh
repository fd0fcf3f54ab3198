#!/usr/bin/env bash
# GPU call 9: PSR schedule study, ReXMoE r=4 seed 1, three (t_s, t_e) settings at once; logs back even if cut short.
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
fi
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log; mkdir -p /tmp/mps /tmp/mps-log
nvidia-cuda-mps-control -d && echo "MPS on"
export OMP_NUM_THREADS=2 CROSSMOE_BIN=$C/crossmoe PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
for s in "0% 10%" "0% 25%" "10% 20%"; do
  set -- $s; d=$E/psr_${1%\%}_${2%\%}
  PSR_START=$1 PSR_END=$2 TOKENS=33e6 BATCH=64 SEQ_LEN=512 RUNS=rexmoe_r4_psr SEEDS=1 PER_GPU=1 SAVE_EVERY=2000 \
    timeout $(( ${BUDGET:-300} - ($(date +%s) - start) )) bash scripts/rexmoe_experiment.sh $D $d > $d.log 2>&1 &
done
wait
echo "done at $(( $(date +%s) - start )) s"
for d in $E/psr_*/; do echo "$d"; tail -2 $d/*/log.csv | cut -d, -f1,4,7,8; done
cd $E && tar czf $OUT/psr.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' psr_*
