#!/usr/bin/env bash
# Decode under --memory-budget with two builds or settings of the expert cache's reads, taking
# turns (A, B, A, B, ...) so that both see the same machine: by default one read in flight
# (--io-depth 1) against 16. Each turn is one `crossmoe bench --json --runs 1` (its own load,
# warm-up and disk probe), at budgets of 100/50/25/10% of the routed experts' bytes, prefetch
# off and on; all weights in memory once before and once after. Prints a line per turn, with the
# machine's load (uptime), and a summary: medians per setting and B over A. Builds that report
# decode_io_busy_s_per_token also get the overlap: of the time reads were in flight (io) and the
# time the decoding thread was not waiting for them (c = time a token - stall), how much ran at
# once (io - stall), against the most that could (min(c, io)), and the bound on what overlap can
# give, (c + io) / max(c, io).
# Usage: bash bench/expert_io_ab.sh MODEL [TURNS]          results: docs/benchmarks.md
# A_BIN, B_BIN (default ./build/crossmoe), A_FLAGS (default --io-depth 1), B_FLAGS (default
# --io-depth 16): e.g. A_BIN=old/crossmoe A_FLAGS= for a build from before --io-depth.
# BUDGETS="100% 50% 25% 10%", PREFETCH="off on", PROMPT_FILE=text.txt (real-text prompts, for
# trained models), PROMPT_TOKENS=16, GEN_TOKENS=32, THREADS=N, BENCH_TIMEOUT=600 (seconds a turn).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
turns=${2:-3}
a_bin=${A_BIN:-./build/crossmoe}
b_bin=${B_BIN:-./build/crossmoe}
a_flags=${A_FLAGS---io-depth 1}
b_flags=${B_FLAGS---io-depth 16}
common=(--runs 1 --prompt-tokens "${PROMPT_TOKENS:-16}" --gen-tokens "${GEN_TOKENS:-32}" --json)
[ -z "${PROMPT_FILE:-}" ] || common+=(--prompt-file "$PROMPT_FILE")
[ -z "${THREADS:-}" ] || common+=(--threads "$THREADS")
results=$(mktemp)
trap 'rm -f "$results"' EXIT

# One bench: prints `TAG {bench json}` or `TAG {cache json}` lines, or TAG failed.
turn() {
  local tag=$1 bin=$2 flags=$3; shift 3
  local load rc=0 out
  load=$(cut -d' ' -f1 /proc/loadavg)
  # shellcheck disable=SC2086
  out=$(timeout -k 10 "${BENCH_TIMEOUT:-600}" "$bin" bench "$model" "${common[@]}" "$@" $flags 2>/dev/null) || rc=$?
  if [ $rc -ne 0 ]; then echo "$tag load=$load failed (exit status $rc)"; return; fi
  while IFS= read -r line; do echo "$tag load=$load $line"; done <<< "$out"
}

lscpu | grep -E 'Model name|^CPU\(s\)'
uptime
echo "A: $a_bin $a_flags"
echo "B: $b_bin $b_flags"
echo "== direct-I/O read bandwidth of the weights file, one 4 MiB request at a time (dd)"
dd if="$model/model.safetensors" of=/dev/null bs=4M count=256 iflag=direct 2>&1 | tail -1
turn "memory" "$b_bin" "" | tee -a "$results"
for budget in ${BUDGETS:-100% 50% 25% 10%}; do
  for prefetch in ${PREFETCH:-off on}; do
    for ((t = 1; t <= turns; ++t)); do
      turn "$budget prefetch=$prefetch A" "$a_bin" "$a_flags" --memory-budget "$budget" --prefetch "$prefetch" | tee -a "$results"
      turn "$budget prefetch=$prefetch B" "$b_bin" "$b_flags" --memory-budget "$budget" --prefetch "$prefetch" | tee -a "$results"
    done
  done
done
turn "memory" "$b_bin" "" | tee -a "$results"
uptime

echo "== summary (medians over turns; read/token and stall per decoded token; disk: the bench's probe at depth 1 / at its --io-depth)"
python3 - "$results" <<'EOF'
import json, re, statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    m = re.match(r'(.*?) load=(\S+) (\{.*\})$', line.strip())
    if not m:
        continue
    tag, j = m.group(1), json.loads(m.group(3))
    r = rows.setdefault(tag, {'tok': [], 'hit': [], 'read': [], 'stall': [], 'd1': [], 'dn': [], 'depth': None, 'load': [],
                              'overlap': [], 'bound': [], 'busy': []})
    if tag not in order:
        order.append(tag)
    if 'decode_tok_s' in j:
        r['tok'].append(j['decode_tok_s']['median'])
        r['load'].append(float(m.group(2)))
    if 'decode_tok_s' in j:
        token_s = 1 / j['decode_tok_s']['median']
    if 'decode_io_busy_s_per_token' in j:
        io, stall = j['decode_io_busy_s_per_token'], j['decode_stall_s_per_token']
        c = token_s - stall
        r['busy'].append(io)
        if min(c, io) > 0:
            r['overlap'].append(max(0.0, io - stall) / min(c, io))
            r['bound'].append((c + io) / max(c, io))
    if 'decode_hit_rate' in j:
        r['hit'].append(j['decode_hit_rate'])
        r['read'].append(j['decode_bytes_read_per_token'])
        r['stall'].append(j['decode_stall_s_per_token'])
        if 'disk_read_gb_s_depth1' in j:
            r['d1'].append(j['disk_read_gb_s_depth1'])
            r['dn'].append(j['disk_read_gb_s_io_depth'])
            r['depth'] = j['io_depth']
med = lambda v: statistics.median(v) if v else float('nan')
print('| setting | side | decode tok/s (each turn) | median | B / A | hit rate | read / token | I/O stall / token | reads in flight / token | overlap: done / possible | bound (c + io) / max | disk GB/s depth 1 / depth N | load |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for tag in order:
    r = rows[tag]
    setting, _, side = tag.rpartition(' ')
    if tag == 'memory':
        setting, side = 'all in memory', ''
    ratio = ''
    if side == 'B' and setting + ' A' in rows and rows[setting + ' A']['tok']:
        ratio = '%.2fx' % (med(r['tok']) / med(rows[setting + ' A']['tok']))
    disk = '%.2f / %.2f (depth %d)' % (med(r['d1']), med(r['dn']), r['depth']) if r['d1'] else ''
    print('| %s | %s | %s | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
        setting, side, ' '.join('%.2f' % x for x in r['tok']), med(r['tok']), ratio,
        '%.1f%%' % (100 * med(r['hit'])) if r['hit'] else '', '%.0f MB' % (med(r['read']) / 1e6) if r['read'] else '',
        '%.0f ms' % (1e3 * med(r['stall'])) if r['stall'] else '', '%.0f ms' % (1e3 * med(r['busy'])) if r['busy'] else '',
        '%.0f%%' % (100 * med(r['overlap'])) if r['overlap'] else '', '%.2fx' % med(r['bound']) if r['bound'] else '', disk,
        ' '.join('%.1f' % x for x in r['load'])))
EOF
