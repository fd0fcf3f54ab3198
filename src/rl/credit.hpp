#pragma once
// Credit assignment for self-play RL, as MARS computes it (roll/utils/functionals.py and
// agentic_pipeline.py in github.com/thu-nics/MARS): which advantage every generated token gets.
//
// A seat's trajectory is its whole conversation with the model's turns in it. With turn scores
// (MARS's use_turn_scores) each own turn's reward sits on that turn's last token; then
//   1. per game, and per seat when per_seat (separate_norm_for_selfplay), the turn rewards are
//      centred (mean) or standardised (mean_std) over all turn ends of the group;
//   2. over the whole batch, rewards are whitened over the model's tokens (whiten_rewards);
//   3. returns are the reverse cumulative sum with discount gamma (the "reinforce" estimator;
//      with gamma 1 every token of a turn gets the return from that turn to the end);
//   4. per seat, the distinct values of the returns (and the 0 of padding) are centred or
//      standardised, each value mapped as its class (advantage_norm, normalize_unique_values);
//   5. over the whole batch, advantages are whitened over the model's tokens.
// Without turn scores, the episode's summed reward is normalised per game (and seat) and placed on
// the seat's last own token. MARS places it on the sequence's last token, which for a seat whose
// opponent moved last is the opponent's message and masked away; here it is the seat's own.
// Every statistic uses MARS's conventions: unbiased variances, whitening by rsqrt(var + 1e-8),
// standardising by (std + 1e-6) and to zero when std <= 1e-6.
#include <string>
#include <vector>

namespace crossmoe::rl {

// One seat's conversation as the policy sees it: position i predicts token i + 1.
struct SeatTrajectory {
  std::string game;                 // normalisation group (MARS groups by the game's tag)
  int seat = 0;
  int positions = 0;                // tokens - 1
  std::vector<unsigned char> response;  // [positions] 1 where token i + 1 is the model's own
  std::vector<int> turn_end;        // position of each own turn's last token, ascending
  std::vector<double> turn_reward;  // that turn's reward
};

enum class Normalization { None, Mean, MeanStd };

struct CreditOptions {
  bool turn_scores = true;
  Normalization reward_norm = Normalization::Mean;
  bool per_seat = true;
  bool whiten_rewards = true;
  Normalization advantage_norm = Normalization::Mean;
  bool whiten_advantages = true;
  double gamma = 1.0;

  // MARS's self-play configs (examples/*/agentic_val_*_selfplay.yaml).
  static CreditOptions mars() { return {}; }
  // One advantage per episode: its reward standardised within its game, GRPO-style.
  static CreditOptions grpo() {
    return {false, Normalization::MeanStd, false, false, Normalization::None, false, 1.0};
  }
  // Plain REINFORCE: every token gets its episode's raw reward.
  static CreditOptions reinforce() {
    return {false, Normalization::None, false, false, Normalization::None, false, 1.0};
  }
};

struct Credit {
  std::vector<std::vector<double>> returns;     // per trajectory, [positions], before normalisation
  std::vector<std::vector<double>> advantages;  // per trajectory, [positions], 0 off the model's tokens
};

// Throws Error when a trajectory is inconsistent (sizes, turn ends off the model's tokens).
Credit assign_credit(const std::vector<SeatTrajectory>& batch, const CreditOptions& options);

}  // namespace crossmoe::rl
