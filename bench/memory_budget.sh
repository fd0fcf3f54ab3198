#!/usr/bin/env bash
# Decode under --memory-budget against all weights in memory, in one session: a Megrez2-layout and
# a layer-local model of the same shapes (hidden 1024, 32 experts of width 704 per pool, top-4,
# 8 layers, bf16; 4.3 MB per expert), each at budgets of 100/50/25/10% of its routed-expert bytes,
# on-demand loading (--prefetch off) and with prefetch (pre-gated for Megrez2, speculative for
# the layer-local one). The disk's direct-I/O read bandwidth is measured with dd in the same run.
# Also the load: peak RSS and wall time of a one-token generate with every weight in memory.
# Random routers spread the load evenly, so hit rates here are a lower bound for trained models.
# Usage: bash bench/memory_budget.sh [DIR] [RUNS]      results: docs/benchmarks.md
# MODELS="DIR1 DIR2" benchmarks those model directories instead (e.g. trained ones,
# bench/trained_routing.sh); PROMPT_FILE=text.txt prefills real text (bench --prompt-file);
# THREADS=N; BENCH_TIMEOUT=600 (seconds per budgeted bench); CROSSMOE_BIN (default ./build/crossmoe).
# GEN_TOKENS=32 (decoded tokens per run: 256 or more warms the cache), PROMPT_TOKENS=16,
# BUDGETS="100 50 25 10" (percentages of the routed experts' bytes), IO_DEPTH=N (--io-depth: expert
# reads in flight; default the binary's own). Each budgeted bench also prints the disk's direct-I/O
# read bandwidth over the experts' bytes at depth 1 and at its I/O depth (its probe), as a line
# "direct-I/O reads: ..." after its JSON.
# BENCH_LOG=FILE appends every bench's progress lines (stderr: one per timed run) to FILE, so that
# a setting that seems stuck shows how far it got. PLOT=PREFIX also plots decode tokens/s and hit
# rates against the budget, as a share and in bytes (build/bench_budget_plot: PREFIX_decode.svg,
# PREFIX_hit_rate.svg, PREFIX_decode_bytes.svg, PREFIX_hit_rate_bytes.svg; saved outputs, several
# runs too: build/bench_budget_plot PREFIX OUTPUT...). Paths are relative to the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/bench-models}
runs=${2:-3}
bin=${CROSSMOE_BIN:-./build/crossmoe}
common=(--runs "$runs" --prompt-tokens "${PROMPT_TOKENS:-16}" --gen-tokens "${GEN_TOKENS:-32}" --json)
[ -z "${PROMPT_FILE:-}" ] || common+=(--prompt-file "$PROMPT_FILE")
[ -z "${THREADS:-}" ] || common+=(--threads "$THREADS")
shape=(--hidden 1024 --layers 8 --heads 8 --kv-heads 2 --head-dim 128 --experts 32 --top-k 4 --expert-size 704
       --vocab 8192 --intermediate 2816)
if [ -z "${MODELS:-}" ]; then
  [ -d "$out/megrez2-1024" ] || $bin init "$out/megrez2-1024" --layout megrez2 "${shape[@]}" --shared-size 1408
  [ -d "$out/moe-1024" ] || $bin init "$out/moe-1024" --layout moe "${shape[@]}"
  MODELS="$out/megrez2-1024 $out/moe-1024"
fi
log=${BENCH_LOG:-/dev/null}
run_all() {
  lscpu | grep -E 'Model name|L3'
  uptime  # the load of other users' processes on this shared machine
  for m in $MODELS; do
    echo "== $m: direct-I/O read bandwidth of the weights file"
    dd if="$m/model.safetensors" of=/dev/null bs=4M iflag=direct 2>&1 | tail -1
    echo "== $m: load (generate one token, all in memory)"
    if [ -x /usr/bin/time ]; then /usr/bin/time -f "wall %e s, peak RSS %M KiB" $bin generate "$m" --ids 1 -n 1 >/dev/null
    else echo "(no /usr/bin/time here: bench's peak RSS below)"; fi
    echo "== $m: decode" | tee -a "$log"
    $bin bench "$m" "${common[@]}" 2>>"$log" | head -1
    for budget in ${BUDGETS:-100 50 25 10}; do
      budget=${budget%\%}%
      for prefetch in off on; do
        echo "-- $m --memory-budget $budget --prefetch $prefetch" | tee -a "$log"
        # A setting that stops making progress must not take the rest of the table with it.
        rc=0
        out=$(timeout -k 10 "${BENCH_TIMEOUT:-600}" $bin bench "$m" "${common[@]}" --memory-budget "$budget" \
          --prefetch "$prefetch" ${IO_DEPTH:+--io-depth "$IO_DEPTH"} 2>>"$log") || rc=$?
        [ -z "$out" ] || echo "$out"
        [ $rc -eq 0 ] || echo "(exit status $rc$([ $rc -eq 124 ] && echo ": timed out after ${BENCH_TIMEOUT:-600} s"))"
        # The probe's figures, from bench's JSON (absent from builds before --io-depth).
        sed -n 's/.*"io_depth": \([0-9]*\).*"disk_read_gb_s_depth1": \([0-9.]*\), "disk_read_gb_s_io_depth": \([0-9.]*\).*/direct-I\/O reads: \2 GB\/s at depth 1, \3 GB\/s at depth \1/p' <<< "$out"
      done
    done
  done
}
if [ -z "${PLOT:-}" ]; then run_all; exit; fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
run_all | tee "$results"
./build/bench_budget_plot "$PLOT" "$results"
