#!/usr/bin/env bash
# Load benchmark of crossmoe serve (docs/benchmarks.md): the same clients against a batching
# server and a one-at-a-time one (--max-batch 1), started one after the other on loopback.
# With PLOT=PREFIX, also PREFIX_throughput.svg, PREFIX_ttft.svg and PREFIX_inter_token.svg
# (build/bench_serve_plot).
# With MAKE=megrez2 or MAKE=dense and no MODEL directory yet, makes it first: a random bf16 model
# of the shape docs/benchmarks.md measures (megrez2: the 224 MB serving model, 85.7 M active
# parameters a token; dense: 10 layers of the same width, 227 MB, every weight used by every token;
# LAYERS=N another layer count) with the tokenizer.json given in TOKENIZER, or else a 400-token one
# trained on TEXT (default build/text/english.txt, which scripts/setup.sh installs) into
# MODEL.tokenizer.
# With QUANT=q8_0|q4_k|mixed and no MODEL directory yet, MODEL is `crossmoe quantize`'s copy of the
# bf16 model FROM (default MODEL.bf16), which MAKE makes first when it does not exist either.
# usage: bash bench/serve_load.sh MODEL [CLIENTS=1,4,16,64] [REQUESTS_PER_CLIENT=1] [MAX_TOKENS=32]
set -euo pipefail
model=$1 clients=${2:-1,4,16,64} per_client=${3:-1} max_tokens=${4:-32}
here=$(cd "$(dirname "$0")" && pwd)
bin=${CROSSMOE:-$here/../build/crossmoe}
bf16_model=$model
if [ -n "${QUANT:-}" ]; then bf16_model=${FROM:-$model.bf16}; fi
if [ -n "${MAKE:-}" ] && [ ! -e "$model" ] && [ ! -e "$bf16_model" ]; then
  shape=(--hidden 1024 --heads 16 --kv-heads 4 --head-dim 64 --intermediate 2816)
  case $MAKE in
    megrez2) shape+=(--layout megrez2 --layers "${LAYERS:-8}" --experts 16 --expert-size 512 --shared-size 512 --top-k 4) ;;
    dense) shape+=(--layout dense --layers "${LAYERS:-10}") ;;
    *) echo "MAKE must be megrez2 or dense, got '$MAKE'" >&2; exit 2 ;;
  esac
  tokenizer=${TOKENIZER:-$bf16_model.tokenizer/tokenizer.json}
  if [ -z "${TOKENIZER:-}" ]; then
    "$bin" tokenizer train "${TEXT:-$here/../build/text/english.txt}" --vocab-size 400 -o "$bf16_model.tokenizer"
  fi
  "$bin" init "$bf16_model" --tokenizer "$tokenizer" "${shape[@]}"
fi
if [ -n "${QUANT:-}" ] && [ ! -e "$model" ]; then "$bin" quantize "$bf16_model" "$model" --type "$QUANT"; fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for batch in 64 1; do
  "$bin" serve "$model" --port 0 --port-file "$work/port" --max-batch "$batch" --max-queue 1000 --kv-memory 2048 \
    > "$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do [ -s "$work/port" ] && break; sleep 0.1; done
  echo "# --max-batch $batch" | tee -a "$work/results"
  node "$here/serve_load.cjs" "http://127.0.0.1:$(cat "$work/port")" "$clients" "$per_client" "$max_tokens" |
    tee -a "$work/results"
  kill "$pid"; wait "$pid" || true
  rm -f "$work/port"
done
if [ -n "${PLOT:-}" ]; then "$here/../build/bench_serve_plot" "$work/results" "$PLOT"; fi
