#pragma once
// Self-play RL (MARS): iterations of rollout, then update.
//
// Rollout: for every training game, games_per_iteration games are played by the current policy
// on both seats (both partners in Hanabi), all at once through the rollout engine. Each seat is a
// growing chat conversation (games/conversation) in one engine row. An answer that does not parse,
// names an illegal action or does not end within max_new_tokens ends the game with the invalid
// penalty for that seat; the other seat's turns keep their rewards.
// Rewards (MARS, games/protocol.hpp): a valid turn earns the move's step reward, the format reward
// and the length term; later moves' step rewards land on each other seat's last turn; an invalid
// answer forfeits (the stake plus 10 for that seat).
// Update: credit assignment (rl/credit), log-probs of the policy before the update and of the
// frozen reference (the starting model, or reference_dir), then one epoch of minibatches of the
// clipped objective with the KL loss (rl/policy_loss), AdamW. The engine reads the updated weights
// in place. With sft_mix_file, every optimizer step also adds sft_mix_coef times the next-token loss
// on the assistant tokens of sft_mix_batch conversations of that file (InstructGPT's "PPO-ptx"):
// a pull towards the warm start's protocol that does not vanish when a group's rewards are all
// equal, as MARS's per-seat normalisation makes them once every game of a seat forfeits.
// Evaluation: the policy against fixed opponents (MCTS for perfect-information games, a CFR+
// policy for poker) as first and as second player, and the self-play score in Hanabi.
//
// Output directory:
//   log.csv, progress.svg          one row per iteration; evaluation rates against iterations
//   checkpoints/iter-NNNNN/        model.safetensors, optimizer.safetensors, state.json
//                                  (train/checkpoint_state.hpp; written whole, then renamed in)
//   checkpoints/latest             name of the newest checkpoint (for people; never trusted)
//   model/                         the final policy (config, weights, tokenizer files)
//
// Resuming (options.resume) continues from the newest complete checkpoint, with the same numbers as
// an uninterrupted run; without one, a directory that holds a run (log.csv or checkpoints) is
// refused, never started over. Before any work: unknown games, a model without a chat template or
// whose tokenizer cannot write a game's text (games::check_game_text), a checkpoint of a run that
// started from another model, or a corrupt one (state.json, a truncated file, a tensor missing or
// of the wrong shape) are Errors naming what is wrong.
#include <filesystem>
#include <string>
#include <vector>

#include "games/protocol.hpp"
#include "rl/credit.hpp"
#include "rl/policy_loss.hpp"
#include "rl/rollout.hpp"

namespace crossmoe::rl {

struct SelfPlayOptions {
  std::filesystem::path model_dir, out_dir;
  std::vector<std::string> games = {"tic_tac_toe", "kuhn_poker", "mini_hanabi"};
  int iterations = 10;
  int games_per_iteration = 32;   // per training game
  int max_new_tokens = 256;       // per answer
  int max_sequence = 4096;        // tokens of one seat's conversation
  int max_turns = 50;             // actions per game (MARS's max_actions_per_traj)
  SamplingOptions sampling;
  CreditOptions credit;
  PolicyLossOptions loss;
  games::MarsRewards rewards;
  std::filesystem::path reference_dir;  // the KL loss's frozen reference; empty: model_dir
  std::filesystem::path sft_mix_file;   // jsonl conversations mixed into the update (empty: none)
  double sft_mix_coef = 0.1;            // weight of their loss beside the policy loss
  int sft_mix_batch = 8;                // conversations per optimizer step
  double lr = 1e-6;
  int64_t warmup = 10;            // optimizer steps of linear warmup
  double weight_decay = 0.05, beta1 = 0.9, beta2 = 0.95, grad_clip = 1.0;
  int minibatch = 8;              // sequences per optimizer step
  // How the update's forward passes run MoE experts: Auto dispatches tokens to their experts (on
  // CUDA a wait for the host per MoE layer, for the expert counts); Dense runs every candidate on
  // every token, weighted by the routing (no wait, C/K times the expert arithmetic).
  train::GroupedExperts update_experts = train::GroupedExperts::Auto;
  int eval_every = 1;             // iterations between evaluations (0 = never)
  int eval_games = 16;            // per game, opponent and seat
  int mcts_simulations = 100;
  int cfr_iterations = 1000;
  std::string device = "cpu";
  bool bf16 = false;
  uint64_t seed = 0;
  bool resume = false;
  int stop_after = 0;             // > 0: checkpoint and stop after this iteration
};

// One iteration's numbers, as log.csv holds them.
struct IterationLog {
  std::vector<std::string> columns;
  std::vector<double> values;
};

// Runs (or resumes) a self-play run; returns the last iteration's row.
IterationLog run_selfplay(const SelfPlayOptions& options);

// log.csv's columns for a list of training games.
std::vector<std::string> selfplay_columns(const std::vector<std::string>& games);

}  // namespace crossmoe::rl
