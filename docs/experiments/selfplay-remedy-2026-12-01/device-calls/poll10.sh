#!/usr/bin/env bash
# Polls the detached runs of call 10 until all are done or the call's time is nearly up; packs logs into $OUT.
E=/tmp/e; start=${POLL_START:-$(date +%s)}; limit=${POLL_LIMIT:-540}
all_done() { for n in rec-none rec-mix01 rec-mix1 rec-kl1 seed2-mix01 transfer; do [ -f $E/$n.done ] || return 1; done; }
while ! all_done && [ $(( $(date +%s) - start )) -lt $limit ]; do sleep 15; done
date; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
for l in $E/*.log; do printf '%s: ' "$(basename $l)"; tr '\r' '\n' < $l | grep -v '^$' | tail -1 | cut -c1-200; done
ls $E/*.done 2>/dev/null
cd $E && tar czf $OUT/rl.tgz --exclude='*/model' --exclude='*/checkpoints' --exclude='*.safetensors' --exclude='*.jsonl' \
  $(ls -d rec-* seed2-* transfer* *.log 2>/dev/null) 2>/dev/null
ls -la $OUT
