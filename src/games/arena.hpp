#pragma once
// Playing episodes and matches between agents, with the protocol's reward shaping.
#include <cmath>
#include <vector>

#include "games/agents.hpp"
#include "games/protocol.hpp"

namespace crossmoe::games {

struct EpisodeResult {
  std::vector<double> returns;        // the game's own payoffs (chips, +-1)
  std::vector<double> shaped;         // MARS rewards: outcome + valid-turn bonus, or the invalid penalty
  std::vector<int> valid_turns;
  int invalid_player = -1;            // who gave an invalid answer, if anyone
};

EpisodeResult play_episode(const Game& game, const std::vector<Agent*>& agents, Rng& rng,
                           const RewardShaping& shaping = {});

struct Proportion {
  double rate, low, high;  // Wilson 95% interval
};
Proportion wilson(int successes, int trials);

struct MatchStats {
  int games = 0, wins = 0, draws = 0, losses = 0, invalid = 0;  // from player 0's side
  double mean_return = 0;                                        // player 0's game payoff
  double mean_shaped = 0;
  double sum_squared_deviation = 0;                              // of player 0's payoff (Welford)
  double return_sd() const { return games > 1 ? std::sqrt(sum_squared_deviation / (games - 1)) : 0.0; }
};

MatchStats play_match(const Game& game, Agent& p0, Agent& p1, int games, uint64_t seed);

}  // namespace crossmoe::games
