# What ran on the device beside call11.sh (2026-12-01, 11:02 UTC). call11.sh starts four runs at once
# and the fifth (no_turn_scores_s3) only after no_turn_scores_s2, which would not have fitted in the
# session's device budget; so its launcher shell (pid 1744) was killed, leaving its four runs going,
# and the fifth was started at once (five runs under MPS, 130 GB of the H200), with a small driver
# that evaluates no_turn_scores_s2 when its run ends, as the launcher would have.
kill -9 1744; sleep 1; E=/tmp/e11; C=/tmp/carry
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log OMP_NUM_THREADS=2 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
setsid bash -c "
  while kill -0 1752 2>/dev/null; do sleep 5; done
  $C/crossmoe games eval $E/no_turn_scores_s2/model --device cuda -n 40 --seed 7 -o $E/no_turn_scores_s2/eval.md --json > $E/no_turn_scores_s2/eval.json 2>> $E/no_turn_scores_s2.log; touch $E/no_turn_scores_s2.done" < /dev/null > $E/driver2.log 2>&1 &
setsid bash -c "SEED=3 SELFPLAY_NAME=no_turn_scores_s3 SELFPLAY_ITERATIONS=20 SELFPLAY_LR=2e-5 SELFPLAY_ARGS='--update-experts dense --threads 2 --no-turn-scores' bash $E/rl_experiment.sh $C/crossmoe none $E selfplay > $E/no_turn_scores_s3.log 2>&1
  $C/crossmoe games eval $E/no_turn_scores_s3/model --device cuda -n 40 --seed 7 -o $E/no_turn_scores_s3/eval.md --json > $E/no_turn_scores_s3/eval.json 2>> $E/no_turn_scores_s3.log; touch $E/no_turn_scores_s3.done" < /dev/null > $E/driver3.log 2>&1 &
