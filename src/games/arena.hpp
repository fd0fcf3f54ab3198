#pragma once
// Playing episodes and matches between agents, scored with MARS's rewards (protocol.hpp).
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "games/agents.hpp"
#include "games/protocol.hpp"

namespace crossmoe::games {

struct EpisodeResult {
  std::vector<double> returns;      // the game's payoffs; after an invalid answer, Forfeit::returns
  std::vector<double> mars_reward;  // each player's MARS step rewards summed over the game, the
                                    // forfeit's included (not the format and length terms, which
                                    // belong to a model's text)
  std::vector<int> valid_turns;
  int invalid_player = -1;          // who gave an invalid answer, if anyone
  std::unique_ptr<State> final_state;
};

EpisodeResult play_episode(const Game& game, const std::vector<Agent*>& agents, Rng& rng, const MarsRewards& r = {});

struct Proportion {
  double rate, low, high;  // Wilson 95% interval
};
Proportion wilson(int successes, int trials);

struct MatchStats {
  int games = 0, wins = 0, draws = 0, losses = 0, invalid = 0;  // from player 0's side
  double mean_return = 0;                                        // player 0's game payoff
  double mean_mars_reward = 0;                                   // player 0's
  double sum_squared_deviation = 0;                              // of player 0's payoff (Welford)
  double return_sd() const { return games > 1 ? std::sqrt(sum_squared_deviation / (games - 1)) : 0.0; }
};

// `after_game` (if set) sees each finished game and the statistics so far.
MatchStats play_match(const Game& game, Agent& p0, Agent& p1, int games, uint64_t seed,
                      const std::function<void(const EpisodeResult&, const MatchStats&)>& after_game = {});

}  // namespace crossmoe::games
