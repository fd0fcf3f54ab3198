#!/usr/bin/env bash
# crossmoe and llama.cpp on the same GGUF files, taking turns in one run. Per file and thread
# count, each round runs llama-bench once and `crossmoe bench` once (prefill of P tokens, decode of
# N; each program warms up with one untimed pass of its own), and the ratio crossmoe / llama.cpp
# is taken per round, so that load and bandwidth drift on a shared machine hit both sides of a
# ratio alike. Both decode at the same context: right after a prompt of P tokens (crossmoe bench
# decodes after its timed prefill; llama-bench's decode test runs at depth P, -d, whose prompt is
# not timed). crossmoe's KV cache is f32, llama.cpp's f16 (llama-bench has no f32 cache type), so
# at the same context llama.cpp reads half the KV bytes. The memory bandwidth is measured in the
# same round: `crossmoe bench` reads 512 MiB (allocated once, huge pages) with the same thread
# count right after its decode, best of 3 passes, and both programs' decode is given as a share of
# it: tokens/s x bytes per token / bandwidth, the bytes being the weights a token reads plus the
# KV cache at the decode's mean context, in each program's own KV dtype.
# BASELINE=path/to/an/older/crossmoe adds a third program to every round (before/after ratios).
#
# The models are random, made by crossmoe's own tools in DIR when missing (dense: hidden 2048,
# FFN 5632, DENSE_LAYERS=10 layers, vocabulary 32000, 1.16 GB in bf16 (4 layers, the earlier
# rounds' model: 623 MB); MoE: hidden 1024, MOE_LAYERS=8 layers of 32 experts of width 704, top-4,
# vocabulary 32000, 1.28 GB in bf16), in bf16, Q8_0 and Q4_K, all several times a 32 MiB L3
# (check lscpu on machines with more: DENSE_LAYERS=24 MOE_LAYERS=20 make Q4_K files of 0.68 and
# 1.08 GB, over twice a 300 MiB L3).
# llama.cpp is built from a local copy of its source given by path (never part of this
# repository), e.g. the one npm node-llama-cpp ships:
#   git clone node_modules/node-llama-cpp/llama/gitRelease.bundle llama.cpp
#   cmake -S llama.cpp -B llama.cpp/build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
#   cmake --build llama.cpp/build --target llama-bench -j2
# Usage: bash bench/gguf_vs_llamacpp.sh LLAMA_CPP_BUILD_DIR ROUNDS DIR [FILE.gguf...]
#        (FILE arguments replace the six made in DIR; THREADS="1 2", PROMPT_TOKENS=512,
#        GEN_TOKENS=32 by default)          results: docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
llama_build=$1 rounds=$2 dir=$3
shift 3
P=${PROMPT_TOKENS:-512} N=${GEN_TOKENS:-32} threads=${THREADS:-1 2} baseline=${BASELINE:-}
crossmoe=./build/crossmoe
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mkdir -p "$dir"
  [ -d "$dir/dense" ] || $crossmoe init "$dir/dense" --layout dense --vocab 32000 --hidden 2048 --layers "${DENSE_LAYERS:-10}" \
    --heads 16 --kv-heads 4 --head-dim 128 --intermediate 5632
  [ -d "$dir/moe" ] || $crossmoe init "$dir/moe" --layout moe --vocab 32000 --hidden 1024 --layers "${MOE_LAYERS:-8}" --heads 8 \
    --kv-heads 2 --head-dim 128 --experts 32 --expert-size 704 --top-k 4
  for m in dense moe; do
    for t in q8_0 q4_k; do
      [ -d "$dir/$m-$t" ] || $crossmoe quantize "$dir/$m" "$dir/$m-$t" --type "$t"
    done
    [ -f "$dir/$m-bf16.gguf" ] || $crossmoe convert "$dir/$m" "$dir/$m-bf16.gguf"
    for t in q8_0 q4_k; do
      [ -f "$dir/$m-$t.gguf" ] || $crossmoe convert "$dir/$m-$t" "$dir/$m-$t.gguf"
    done
    files+=("$dir/$m-bf16.gguf" "$dir/$m-q8_0.gguf" "$dir/$m-q4_k.gguf")
  done
fi
lscpu | grep -E 'Model name|L3'
uptime  # the load of other users' processes on this shared machine
crossmoe_run() {  # binary file threads -> "prefill decode bandwidth_bytes_per_s weight_bytes kv_bytes" per token
  "$1" bench "$2" --prompt-tokens "$P" --gen-tokens "$N" --runs 1 --threads "$3" --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.readline())
print(r["prefill_tok_s"]["median"], r["decode_tok_s"]["median"], r["read_bandwidth_gb_s"]["median"] * 1e9,
      r.get("weight_bytes_per_token", r["bytes_per_token"]), r.get("kv_bytes_per_token", 0))'
}
for file in "${files[@]}"; do
  for t in $threads; do
    for ((r = 1; r <= rounds; ++r)); do
      # flash attention off: on the CPU it rounds through f16; crossmoe attends in f32. Prefill from
      # an empty context, then decode at depth P, as crossmoe bench does them.
      llama=$(for test in "-p $P -n 0" "-p 0 -n $N -d $P"; do
        # shellcheck disable=SC2086
        "$llama_build"/bin/llama-bench -m "$file" $test -t "$t" -r 1 -fa 0 -o json 2>/dev/null |
          python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["avg_ts"])'
      done | paste -sd' ')
      ours=$(crossmoe_run "$crossmoe" "$file" "$t")
      before=-
      [ -z "$baseline" ] || before=$(crossmoe_run "$baseline" "$file" "$t" | cut -d' ' -f1,2 --output-delimiter=,)
      echo "$(basename "$file") $t $llama $ours $before"
      echo "$(basename "$file") $t $llama $ours $before" >&2  # progress
    done
  done
done | python3 -c '
import sys, statistics
rows = {}
for line in sys.stdin:
    f, t, lp, ld, cp, cd, bw, wb, kv, before = line.split()
    b = [float(v) for v in before.split(",")] if before != "-" else None
    # bytes per token of crossmoe (f32 KV cache) and of llama.cpp (f16 KV cache: half the KV bytes)
    bytes_ours, bytes_llama = float(wb) + float(kv), float(wb) + float(kv) / 2
    rows.setdefault((f, t), []).append((float(lp), float(ld), float(cp), float(cd), float(bw), bytes_ours, b, bytes_llama))
with_before = any(x[6] for rs in rows.values() for x in rs)
head = ("| file | threads | llama.cpp prefill tok/s | crossmoe prefill tok/s | ratio | llama.cpp decode tok/s "
        "| crossmoe decode tok/s | ratio | bandwidth GB/s | crossmoe decode / bandwidth | llama.cpp decode / bandwidth |")
if with_before: head += " before: prefill ratio | before: decode ratio | prefill after / before | decode after / before |"
print(head)
print("|---" * (head.count("|") - 1) + "|")
for (f, t), rs in rows.items():
    med = lambda k: statistics.median(x[k] for x in rs)
    per = lambda fn: statistics.median(fn(x) for x in rs)
    line = (f"| {f} | {t} | {med(0):.1f} | {med(2):.1f} | {per(lambda x: x[2] / x[0]):.2f} | {med(1):.2f} | {med(3):.2f} "
            f"| {per(lambda x: x[3] / x[1]):.2f} | {med(4) / 1e9:.1f} | {100 * per(lambda x: x[3] * x[5] / x[4]):.0f}% "
            f"| {100 * per(lambda x: x[1] * x[7] / x[4]):.0f}% |")
    if with_before:
        line += (f" {per(lambda x: x[6][0] / x[0]):.2f} | {per(lambda x: x[6][1] / x[1]):.2f} "
                 f"| {per(lambda x: x[2] / x[6][0]):.2f} | {per(lambda x: x[3] / x[6][1]):.2f} |")
    print(line)
'
