#!/usr/bin/env bash
# The trained-router benchmark of issue 15, on the GPU machine: random routers spread the load
# evenly and make every expert cache look bad, so this trains a Megrez2-shaped model (the real
# hidden 2048, expert width 1408, 64 experts per pool, top-6, layer 0 dense, pools shared by 3
# layers, pre-gated) and a layer-local model of the same shapes on real text (CUDA), then, on
# that machine's CPU and disk, records their routing on held-out text, replays it against the
# eviction policies (cache-sim, Belady as the bound) and runs bench/memory_budget.sh on both with
# real-text prompts. The models stay on that machine (gigabytes; the device tool returns only
# small files), so every stage runs there; rerunning continues (finished stages are skipped,
# training resumes from its checkpoints).
#   bash bench/trained_routing.sh DATA HELDOUT OUT [STAGE...]   STAGE: train trace sim bench (default all)
# DATA: `crossmoe data prepare` output (e.g. scripts/corpus.sh's 50M tokens); HELDOUT: a text file
# of documents from its validation split (data prepare holds out every 10th document: lines 10,
# 20, ... of scripts/corpus.sh's corpus.jsonl), the prompts of the traces and of bench. Settings (environment): LAYERS=4 (1 dense + groups of 3), STEPS=300, BATCH=16,
# SEQ_LEN=512, SAVE_EVERY=0 (checkpoints besides the last), DEVICE=cuda, RUNS=2 (timed runs per bench
# setting), THREADS (bench's CPU threads),
# CROSSMOE_BIN=./build/crossmoe; SHAPE="--hidden 64 ..." replaces the shape flags (to try the
# stages on a small model and a CPU).
# Disk: a checkpoint holds fp32 weights and two AdamW moments, 12 bytes a parameter (43 GB for the
# layer-local model at LAYERS=7, 3.6 B parameters), and a new one is written in full before the
# previous one is deleted, so intermediate checkpoints need twice that; the GPU machine has 64 GB.
# Once a model is exported its checkpoints are deleted (the stage is then skipped anyway).
# The bench stage writes OUT/bench.txt (the table) and OUT/bench.log (each bench's progress, one
# line per timed run); plot the table with build/bench_budget_plot PREFIX OUT/bench.txt.
# Started in the background to outlive the shell that starts it (a remote call that returns
# before the run ends), it needs its own session: `setsid bash bench/trained_routing.sh ... &`.
# A run left in the caller's session is killed with it, mid-stage, and looks like a hang from the
# outside (issue 15's "25% hang" was that; docs/benchmarks.md).
set -euo pipefail
data=$1; heldout=$2; out=$3; shift 3
stages=${*:-train trace sim bench}
bin=${CROSSMOE_BIN:-./build/crossmoe}
mkdir -p "$out"
read -r -a shape <<< "${SHAPE:---hidden 2048 --layers ${LAYERS:-4} --heads 16 --kv-heads 4 --head-dim 128 --intermediate 5632 --experts 64 --top-k 6 --expert-size 1408 --shared-size 2816 --first-dense 1}"
declare -A layouts=([megrez2]="--layout megrez2 --group-size 3 --pre-gate on" [local]="--layout moe")
for stage in $stages; do
  case $stage in
  train)
    for name in megrez2 local; do
      dir=$out/$name
      [ -f "$dir/model/config.json" ] && continue
      if [ -d "$dir/checkpoints" ]; then "$bin" train -o "$dir" --resume
      else
        rm -rf "$dir"
        # shellcheck disable=SC2086
        "$bin" train --data "$data" -o "$dir" "${shape[@]}" ${layouts[$name]} --steps "${STEPS:-300}" \
          --batch "${BATCH:-16}" --seq-len "${SEQ_LEN:-512}" --data-order epoch --lr 1e-3 --warmup 30 \
          --eval-every 100 --save-every "${SAVE_EVERY:-0}" --device "${DEVICE:-cuda}" --seed 1 --export-dtype bf16
      fi
      rm -rf "$dir/checkpoints"
    done ;;
  trace)
    head -c 4000 "$heldout" > "$out/trace-prompt.txt"
    for name in megrez2 local; do
      [ -f "$out/$name.trace.jsonl" ] && continue
      "$bin" generate "$out/$name/model" -f "$out/trace-prompt.txt" -n 128 --temperature 0 \
        --trace "$out/$name.trace.jsonl.tmp" > /dev/null
      mv "$out/$name.trace.jsonl.tmp" "$out/$name.trace.jsonl"
    done ;;
  sim)
    for name in megrez2 local; do
      echo "== $name: eviction policies on its routing trace"
      "$bin" cache-sim "$out/$name.trace.jsonl" | tee "$out/$name.cache-sim.txt"
      # The decode alone (the trace's last 127 positions, after the prompt has filled the cache),
      # with the next layer's experts known as pre-gated prefetch knows them.
      last=$(tail -1 "$out/$name.trace.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["position"])')
      "$bin" cache-sim "$out/$name.trace.jsonl" --from-position $((last - 126)) --next-known \
        --slots 6,12,24,32,48,64,96,128 | tee -a "$out/$name.cache-sim.txt"
    done ;;
  bench)
    MODELS="$(realpath "$out/megrez2/model") $(realpath "$out/local/model")" PROMPT_FILE=$(realpath "$heldout") \
      CROSSMOE_BIN=$(realpath "$bin") BENCH_LOG=$(realpath "$out")/bench.log \
      bash "$(dirname "$0")/memory_budget.sh" "$out" "${RUNS:-2}" | tee "$out/bench.txt" ;;
  *) echo "error: unknown stage '$stage' (train, trace, sim, bench)" >&2; exit 2 ;;
  esac
done
