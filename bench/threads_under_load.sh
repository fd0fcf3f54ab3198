#!/usr/bin/env bash
# crossmoe bench at the default thread count and at one thread, alone and beside
# busy processes (a shell loop per busy core, pinned with taskset), all in one run, printing
# decode and prefill medians and the ratios default / one thread. With BASELINE=path/to/old/crossmoe
# the same table is measured for that binary in the same run, and new / old ratios are printed.
#   bash bench/threads_under_load.sh [MODEL_DIR] [REPEATS]
# MODEL_DIR defaults to a random model of the demo's shape (scripts/demo.sh), made with init.
# BUSY=n sets how many busy processes compete (default 1: "another process busy on the machine");
# RUNS, PROMPT, GEN set crossmoe bench's --runs, --prompt-tokens and --gen-tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-build/bench-models/demo-shape}
repeats=${2:-3}
busy=${BUSY:-1}
runs=${RUNS:-3}
prompt=${PROMPT:-64}
gen=${GEN:-64}
bins=(build/crossmoe)
[ -n "${BASELINE:-}" ] && bins+=("$BASELINE")
if [ ! -f "$model/config.json" ]; then
  ./build/crossmoe init "$model" --layout megrez2 --vocab 4096 --layers 4 --hidden 192 --heads 6 \
    --kv-heads 2 --head-dim 32 --intermediate 512 --experts 8 --top-k 2 --expert-size 128 \
    --shared-size 128 --force >/dev/null
fi
cores=$(nproc)
pids=()
stop_busy() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_busy EXIT
start_busy() {
  for ((i = 0; i < busy; ++i)); do
    taskset -c $((i % cores)) sh -c 'while :; do :; done' &
    pids+=($!)
  done
  sleep 0.5
}
# One crossmoe bench: prints "prefill decode" medians in tokens/s.
measure() {
  local bin=$1 threads=$2
  local args=("$model" --json --runs "$runs" --prompt-tokens "$prompt" --gen-tokens "$gen")
  [ "$threads" != default ] && args+=(--threads "$threads")
  "$bin" bench "${args[@]}" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["prefill_tok_s"]["median"], j["decode_tok_s"]["median"])'
}
results=$(mktemp)
for ((r = 1; r <= repeats; ++r)); do
  for load in alone busy; do
    [ "$load" = busy ] && start_busy
    for bin in "${bins[@]}"; do
      for threads in default 1; do
        read -r prefill decode < <(measure "$bin" "$threads")
        echo "$bin $load $threads $prefill $decode" >>"$results"
        printf 'repeat %d  %-22s %-5s threads=%-8s prefill %9.1f  decode %9.2f tok/s\n' \
          "$r" "$bin" "$load" "$threads" "$prefill" "$decode"
      done
    done
    stop_busy
  done
done
echo
echo "medians over $repeats repeats ($cores cores, $busy busy process(es) when busy; model $model)"
python3 - "$results" "${bins[@]}" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
bins = sys.argv[2:]
def med(bin, load, threads, col):
    return statistics.median(float(r[col]) for r in rows if r[:3] == [bin, load, threads])
for bin in bins:
    print(f"{bin}")
    for load in ("alone", "busy"):
        d, o = med(bin, load, "default", 4), med(bin, load, "1", 4)
        pd, po = med(bin, load, "default", 3), med(bin, load, "1", 3)
        print(f"  {load:4}  decode default {d:9.2f}  1 thread {o:9.2f}  ratio {d / o:5.2f}"
              f"   prefill default {pd:9.1f}  1 thread {po:9.1f}  ratio {pd / po:5.2f}")
if len(bins) == 2:
    new, old = bins
    for load in ("alone", "busy"):
        for threads in ("default", "1"):
            print(f"new / old  {load:4} threads={threads:7}  decode {med(new, load, threads, 4) / med(old, load, threads, 4):5.2f}"
                  f"  prefill {med(new, load, threads, 3) / med(old, load, threads, 3):5.2f}")
EOF
rm -f "$results"
