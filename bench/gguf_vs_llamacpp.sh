#!/usr/bin/env bash
# crossmoe and llama.cpp on the same GGUF files, taking turns in one run: each round runs
# llama-bench once and `crossmoe bench` once per file (prefill of P tokens, decode of N), and the
# ratio crossmoe / llama.cpp is taken per round, so that load and bandwidth drift on a shared
# machine hit both sides of a ratio alike. llama.cpp is built from a local copy of its source
# given by path (never part of this repository), e.g. the one npm node-llama-cpp ships:
#   git clone node_modules/node-llama-cpp/llama/gitRelease.bundle llama.cpp
#   cmake -S llama.cpp -B llama.cpp/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build llama.cpp/build --target llama-bench
# Usage: bash bench/gguf_vs_llamacpp.sh LLAMA_CPP_BUILD_DIR ROUNDS THREADS FILE.gguf...
#        results: docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
llama_build=$1 rounds=$2 threads=$3
shift 3
P=${PROMPT_TOKENS:-128} N=${GEN_TOKENS:-32}
lscpu | grep -E 'Model name|L3'
uptime  # the load of other users' processes on this shared machine
for file in "$@"; do
  for ((r = 1; r <= rounds; ++r)); do
    # flash attention off: on the CPU it rounds through f16; crossmoe attends in f32.
    llama=$("$llama_build"/bin/llama-bench -m "$file" -p "$P" -n "$N" -t "$threads" -r 1 -fa 0 -o json 2>/dev/null |
      python3 -c 'import json,sys; r=json.load(sys.stdin); print(*[x["avg_ts"] for x in r])')
    ours=$(./build/crossmoe bench "$file" --prompt-tokens "$P" --gen-tokens "$N" --runs 1 --threads "$threads" --json 2>/dev/null |
      python3 -c 'import json,sys; r=json.loads(sys.stdin.readline()); print(r["prefill_tok_s"]["median"], r["decode_tok_s"]["median"])')
    echo "$file $r $llama $ours"
  done
done | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    f, r, lp, ld, cp, cd = line.split()
    rows.setdefault(f, []).append((float(lp), float(ld), float(cp), float(cd)))
print("| file | llama.cpp prefill tok/s | crossmoe prefill tok/s | ratio | llama.cpp decode tok/s | crossmoe decode tok/s | ratio |")
print("|---|---|---|---|---|---|---|")
for f, rs in rows.items():
    med = lambda k: statistics.median(x[k] for x in rs)
    pr = statistics.median(x[2] / x[0] for x in rs); dr = statistics.median(x[3] / x[1] for x in rs)
    print(f"| {f} | {med(0):.1f} | {med(2):.1f} | {pr:.2f} | {med(1):.2f} | {med(3):.2f} | {dr:.2f} |")
'
