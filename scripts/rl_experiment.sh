#!/usr/bin/env bash
# The self-play experiment of docs/experiments.md ("Self-play RL"), stage by stage, on the GPU
# machine: pre-train a small Megrez2-layout model on the Brown corpus, write reference players'
# transcripts of the training games, teach the protocol by SFT, evaluate, then MARS self-play.
# A stage whose output exists is skipped, and the long ones resume from their checkpoints, so the
# script continues where the last device session stopped.
#   bash scripts/rl_experiment.sh BIN DATA OUT STAGE...
# BIN: a crossmoe with the trainer (scripts/gpu_box_build.sh); DATA: `crossmoe data prepare` output
# whose tokenizer has a ChatML template; OUT: the experiment directory; STAGE: pretrain,
# transcripts (WARM_START=reference: the reference players only; mixed: half of each game's
# transcripts from random players, so that the SFT policy plays at mixed strength and self-play has
# something to improve; FORMAT_GAMES="connect_four:600 leduc_poker:600" adds transcripts of games held out
# of self-play, from random players only, so that the policy can read and answer their protocol
# without being taught how to play them), sft, selfplay (SELFPLAY_ITERATIONS, default 30; SELFPLAY_ARGS adds options, e.g.
# --no-turn-scores with SELFPLAY_NAME=no_turn_scores for an ablation; SELFPLAY_LR, default 1e-5), eval-sft and eval-selfplay
# (`games eval` on all games against MARS's opponents, EVAL_GAMES per row, default 50, into
# OUT/eval-*.md and .json), or a time limit `until=SECONDS` that makes the stages after it stop
# (at a checkpoint) in time.
set -euo pipefail
bin=$1 data=$2 out=$3
shift 3
mkdir -p "$out"
deadline=0
games=tic_tac_toe,kuhn_poker,mini_hanabi
seed=${SEED:-1}
device=${DEVICE:-cuda}  # cpu to try the stages on a machine without a GPU
# Seconds left before the deadline, for `timeout` (a stopped stage resumes next time).
left() { if [ "$deadline" -eq 0 ]; then echo 100000; else echo $((deadline - $(date +%s))); fi; }
resume_flag() { [ -d "$1/checkpoints" ] && echo --resume || true; }

for stage in "$@"; do
  case $stage in
  until=*) deadline=$(($(date +%s) + ${stage#until=})) ;;
  pretrain)
    [ -f "$out/pretrain/model/config.json" ] && continue
    timeout -s INT "$(left)" "$bin" train --data "$data" -o "$out/pretrain" $(resume_flag "$out/pretrain") \
      --layout megrez2 --layers 8 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 768 \
      --experts 16 --top-k 4 --expert-size 256 --shared-size 256 --context 4096 \
      --steps 1200 --batch 32 --seq-len 512 --lr 2e-3 --warmup 60 --eval-every 200 --save-every 200 \
      --seed "$seed" --device "$device" --export-dtype bf16
    ;;
  transcripts)
    [ -f "$out/sft.jsonl" ] && continue
    for g in tic_tac_toe:1500 kuhn_poker:1500 mini_hanabi:600; do
      game=${g%%:*} n=${g##*:}
      case ${WARM_START:-reference} in
      reference) "$bin" games transcripts "$game" -n "$n" -o "$out/transcripts-$game.jsonl" --seed "$seed" ;;
      mixed)
        "$bin" games transcripts "$game" -n $((n / 2)) -o "$out/transcripts-$game.jsonl" --seed "$seed"
        "$bin" games transcripts "$game" -n $((n / 2)) -o "$out/transcripts-$game-random.jsonl" --seed "$seed" \
          --p0 random --p1 random ;;
      *) echo "error: WARM_START must be reference or mixed, got '$WARM_START'" >&2; exit 2 ;;
      esac
    done
    for g in ${FORMAT_GAMES:-}; do
      "$bin" games transcripts "${g%%:*}" -n "${g##*:}" -o "$out/transcripts-${g%%:*}-random.jsonl" --seed "$seed" \
        --p0 random --p1 random
    done
    cat "$out"/transcripts-*.jsonl > "$out/sft.jsonl.tmp" && mv "$out/sft.jsonl.tmp" "$out/sft.jsonl"
    ;;
  sft)
    [ -f "$out/sft/model/config.json" ] && continue
    timeout -s INT "$(left)" "$bin" train --sft "$out/sft.jsonl" --init "$out/pretrain/model" -o "$out/sft" \
      $(resume_flag "$out/sft") --steps 500 --batch 32 --seq-len 3072 --lr 5e-4 --warmup 30 \
      --eval-every 100 --save-every 100 --seed "$seed" --device "$device" --export-dtype bf16
    ;;
  selfplay)
    name=${SELFPLAY_NAME:-selfplay}
    [ -f "$out/$name/model/config.json" ] && continue
    timeout -s INT "$(left)" "$bin" rl selfplay "$out/sft/model" -o "$out/$name" $(resume_flag "$out/$name") \
      --game "$games" --iterations "${SELFPLAY_ITERATIONS:-30}" --games-per-iteration 64 \
      --max-new-tokens 256 --max-sequence 4096 --lr "${SELFPLAY_LR:-1e-5}" --eval-games 16 --seed "$seed" --device "$device" \
      ${SELFPLAY_ARGS:-}
    ;;
  eval-sft | eval-selfplay)
    model=$out/${stage#eval-}/model
    [ "$stage" = eval-selfplay ] && model=$out/${SELFPLAY_NAME:-selfplay}/model
    [ -f "$out/$stage.json" ] && continue
    # The table as markdown (-o) and as JSON (stdout), renamed into place when complete.
    timeout -s INT "$(left)" "$bin" games eval "$model" --device "$device" -n "${EVAL_GAMES:-50}" --seed "$seed" \
      -o "$out/$stage.md" --json > "$out/$stage.json.tmp"
    mv "$out/$stage.json.tmp" "$out/$stage.json"
    ;;
  *) echo "error: unknown stage '$stage' (pretrain, transcripts, sft, selfplay, eval-sft, eval-selfplay, until=SECONDS)" >&2
     exit 2 ;;
  esac
done
