#!/usr/bin/env bash
# Polls the detached experiment until done or the call's time is nearly up; when done, packs the results into $OUT.
E=/tmp/rx; start=${POLL_START:-$(date +%s)}; limit=${POLL_LIMIT:-560}
while [ ! -f $E/done ] && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 20; done
date; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
echo "finished: $(ls -d $E/out/*/model 2>/dev/null | wc -l) of 21"
for l in $E/out/*.log $E/rerun/*.log; do printf '%s: ' "$(basename $l)"; tr '\r' '\n' < $l | grep -v '^$' | tail -1 | cut -c1-160; done
if [ -f $E/done ]; then
  cat $E/experiment.log | tail -30
  cd $E && tar czf $OUT/rexmoe.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' out rerun experiment.log rerun.log
  ls -la $OUT
fi
