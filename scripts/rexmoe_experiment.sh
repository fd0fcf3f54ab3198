#!/usr/bin/env bash
# The ReXMoE claims (reuse r = 2, 4, 8, with and without PSR) and Megrez2 sharing against
# layer-local MoE (docs/experiments.md). Every run: the same data, tokens, optimizer and schedule,
# the same shape (by default 8 MoE layers with E = 8 experts of 256 per layer or per shared pool,
# top-2, hidden 256); only the cross-layer layout and the seed differ.
#   bash scripts/rexmoe_experiment.sh DATA_DIR OUT_DIR
# Settings (environment):
#   TOKENS=33e6         training tokens per run; steps = TOKENS / (BATCH * SEQ_LEN), rounded
#   BATCH=32 SEQ_LEN=256  global batch (sequences) and sequence length
#   SEEDS="1 2 3"       seeds per layout (init, data order, PSR masks)
#   RUNS="local ..."    layouts to run (default all seven, names below)
#   PSR_START=10% PSR_END=50%   the PSR schedule, steps or percentages of the run
#   (rexmoe_r4_psr_token, run only when RUNS names it: PSR with a mask per token, --psr-mask token)
#   DATA_ORDER=epoch    epoch: no window read twice until the data runs out; or random
#   DEVICE=cuda GPUS=1 PER_GPU=2   runs go to GPUs round-robin, PER_GPU at a time on each
#   EVAL_POINTS=20 EVAL_BATCHES=20   validations per run, batches per validation
#   SAVE_EVERY=steps/20 STOP_AFTER=   checkpoints; STOP_AFTER=N stops every run after step N
#   SHAPE="--hidden 256 ..."   the model shape flags shared by every layout
#   TRAIN_ARGS=         more `crossmoe train` flags for every new run, e.g. --deterministic
#   CROSSMOE_BIN=./build/crossmoe
# Rerunning the same command continues: a finished run (OUT/NAME-seedS/model) is kept, a stopped
# or killed one resumes from its newest checkpoint (--resume), so the runs can be split across
# device sessions. At the end: OUT/summary.md (mean, standard deviation, min and max of the final
# validation perplexity over seeds per layout), OUT/summary.csv, and one plot of the validation
# curves (mean over seeds, each seed faint) per comparison: OUT/rexmoe_vs_local.svg,
# OUT/psr.svg, OUT/megrez2_vs_local.svg.
set -euo pipefail
data=$1; out=$2
bin=${CROSSMOE_BIN:-./build/crossmoe}
batch=${BATCH:-32}; seq_len=${SEQ_LEN:-256}; seeds=${SEEDS:-"1 2 3"}
gpus=${GPUS:-1}; per_gpu=${PER_GPU:-2}; device=${DEVICE:-cuda}
steps=$(python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) / (int(sys.argv[2]) * int(sys.argv[3])))))' \
        "${TOKENS:-33e6}" "$batch" "$seq_len")
eval_every=$(( steps / ${EVAL_POINTS:-20} > 0 ? steps / ${EVAL_POINTS:-20} : 1 ))
save_every=${SAVE_EVERY:-$(( steps / 20 > 0 ? steps / 20 : 1 ))}
mkdir -p "$out"
read -r -a base <<< "${SHAPE:---hidden 256 --layers 8 --heads 4 --kv-heads 2 --head-dim 64 --experts 8 --top-k 2 --expert-size 256 --shared-size 0 --first-dense 0 --scoring softmax}"
train=(--steps "$steps" --batch "$batch" --seq-len "$seq_len" --data-order "${DATA_ORDER:-epoch}" --lr 3e-3
       --warmup $(( steps / 20 )) --eval-every "$eval_every" --eval-batches "${EVAL_BATCHES:-20}"
       --save-every "$save_every" --log-every "$eval_every" --device "$device")
read -r -a extra <<< "${TRAIN_ARGS:-}"
train+=("${extra[@]}")
psr="--psr-start ${PSR_START:-10%} --psr-end ${PSR_END:-50%}"
declare -A runs=(
  [local]="--layout moe"
  [rexmoe_r2]="--layout rexmoe --group-size 2"
  [rexmoe_r4]="--layout rexmoe --group-size 4"
  [rexmoe_r4_psr]="--layout rexmoe --group-size 4 $psr"
  [rexmoe_r8_psr]="--layout rexmoe --group-size 8 $psr"
  [rexmoe_r4_psr_token]="--layout rexmoe --group-size 4 $psr --psr-mask token"  # not in the default RUNS
  [megrez2_r3]="--layout megrez2 --group-size 3 --pre-gate off"
  [megrez2_r3_pregate]="--layout megrez2 --group-size 3 --pre-gate on"
)
read -r -a order <<< "${RUNS:-local rexmoe_r2 rexmoe_r4 rexmoe_r4_psr rexmoe_r8_psr megrez2_r3 megrez2_r3_pregate}"
for name in "${order[@]}"; do
  [ -n "${runs[$name]:-}" ] || { echo "error: RUNS: unknown layout '$name' (known: ${!runs[*]})" >&2; exit 2; }
done
echo "$steps steps of $batch x $seq_len tokens ($(( steps * batch * seq_len )) tokens) per run; seeds $seeds"
stop=(); [ -z "${STOP_AFTER:-}" ] || stop=(--stop-after "$STOP_AFTER")
slot=0; pids=(); failed=0
for name in "${order[@]}"; do
  for seed in $seeds; do
    dir="$out/$name-seed$seed"
    [ -f "$dir/model/model.safetensors" ] && continue
    gpu=$((slot % gpus)); slot=$((slot + 1))
    if [ -d "$dir/checkpoints" ]; then
      command=("$bin" train -o "$dir" --resume --device "$device" "${stop[@]}")
    else
      rm -rf "$dir"
      # shellcheck disable=SC2206
      command=("$bin" train --data "$data" -o "$dir" "${base[@]}" ${runs[$name]} "${train[@]}" --seed "$seed" "${stop[@]}")
    fi
    echo "${command[*]}" >> "$out/commands.txt"
    CUDA_VISIBLE_DEVICES=$gpu "${command[@]}" >> "$dir.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -ge $((gpus * per_gpu)) ]; then wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}"); fi
  done
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" -eq 0 ] || echo "some runs failed: see $out/*.log" >&2
python3 - "$out" "${order[@]}" <<'PY'
import csv, glob, html, math, os, re, statistics, sys

out, names = sys.argv[1], sys.argv[2:]

def runs_of(name):
    """(seed label, log.csv rows, console log) of every seed's run of a layout."""
    found = []
    for log in sorted(glob.glob(f"{out}/{name}-seed*.log")):
        path = log[:-4] + "/log.csv"
        rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
        found.append((log[len(f"{out}/{name}-seed"):-len(".log")], rows, open(log).read()))
    return found

def curve(rows):
    return [(int(r["tokens"]), float(r["val_loss"])) for r in rows if r["val_loss"]]

summary, curves = [], {}
for name in names:
    finals, speeds, seeds, stored, active, done = [], [], [], "?", "?", True
    curves[name] = []
    for seed, rows, console in runs_of(name):
        m = re.search(r"(\d+) parameters, (\d+) active", console)
        if m:
            stored, active = f"{int(m.group(1)) / 1e6:.2f}M", f"{int(m.group(2)) / 1e6:.2f}M"
        points = curve(rows)
        curves[name].append(points)
        finished = os.path.exists(f"{out}/{name}-seed{seed}/model/model.safetensors")
        done &= finished
        if points and finished:
            finals.append(math.exp(points[-1][1]))
            speeds.append(statistics.mean(float(r["tokens_per_s"]) for r in rows))
            seeds.append(seed)
    summary.append((name, stored, active, finals, speeds, seeds, done))

header = ["run", "stored params", "active params", "val ppl per seed", "mean", "std", "min", "max", "tokens/s"]
lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
with open(f"{out}/summary.csv", "w") as f:
    f.write("run,seed,final_val_ppl,tokens_per_s\n")
    for name, stored, active, finals, speeds, seeds, done in summary:
        for seed, p, s in zip(seeds, finals, speeds):
            f.write(f"{name},{seed},{p:.4f},{s:.1f}\n")
        if not finals:
            lines.append(f"| {name} | {stored} | {active} | (no finished run) | | | | | |")
            continue
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        lines.append(f"| {name}{'' if done else ' (unfinished seeds left out)'} | {stored} | {active} | "
                     f"{' / '.join(f'{p:.2f}' for p in finals)} | {statistics.mean(finals):.2f} | {std:.2f} | "
                     f"{min(finals):.2f} | {max(finals):.2f} | {statistics.mean(speeds):.0f} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]

def plot(path, title, layouts):
    """Validation loss against tokens: the mean over seeds (at the points every seed reached),
    each seed as a faint line. Plain SVG, no plotting library."""
    series = [(n, [c for c in curves.get(n, []) if c]) for n in layouts]
    series = [(n, cs) for n, cs in series if cs]
    if not series:
        return
    W, H, left, right, top, bottom = 720, 440, 70, 190, 40, 50
    xs = [x for _, cs in series for c in cs for x, _ in c]
    ys = [y for _, cs in series for c in cs for _, y in c]
    x0, x1 = 0.0, max(xs) or 1.0
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / (x1 - x0) * (W - left - right)
    py = lambda y: top + (y1 - y) / (y1 - y0) * (H - top - bottom)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
           f'<line x1="{left}" y1="{H - bottom}" x2="{W - right}" y2="{H - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{H - bottom}" stroke="black"/>',
           f'<text x="{(left + W - right) / 2}" y="{H - 12}" text-anchor="middle">tokens (millions)</text>',
           f'<text x="16" y="{(top + H - bottom) / 2}" text-anchor="middle" transform="rotate(-90 16 {(top + H - bottom) / 2})">validation loss</text>']
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        y = y0 + (y1 - y0) * i / 4
        svg.append(f'<text x="{px(x):.1f}" y="{H - bottom + 16}" text-anchor="middle">{x / 1e6:.3g}</text>')
        svg.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{W - right}" y2="{py(y):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    for k, (name, cs) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        for c in cs:
            pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in c)
            svg.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-opacity="0.3" stroke-width="1"/>')
        reached = min(len(c) for c in cs)
        mean = [(cs[0][i][0], statistics.mean(c[i][1] for c in cs)) for i in range(reached)]
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in mean)
        svg.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = top + 16 + 18 * k
        svg.append(f'<line x1="{W - right + 12}" y1="{ly - 4}" x2="{W - right + 36}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        svg.append(f'<text x="{W - right + 42}" y="{ly}">{html.escape(name)} ({len(cs)} seeds)</text>')
    svg.append("</svg>")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(svg) + "\n")
    os.replace(path + ".tmp", path)
    print("wrote", path)

plot(f"{out}/rexmoe_vs_local.svg", "ReXMoE reuse (no PSR) against layer-local", ["local", "rexmoe_r2", "rexmoe_r4"])
plot(f"{out}/psr.svg", "ReXMoE with and without PSR", ["local", "rexmoe_r4", "rexmoe_r4_psr", "rexmoe_r4_psr_token", "rexmoe_r8_psr"])
plot(f"{out}/megrez2_vs_local.svg", "Megrez2 sharing against layer-local", ["local", "megrez2_r3", "megrez2_r3_pregate"])
PY
exit "$failed"
