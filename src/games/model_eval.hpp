#pragma once
// A model's evaluation on the games, against MARS's evaluation opponents
// (examples/model_game_eval/agentic_rollout_eval.yaml in the MARS code, docs/games.md):
//   tic_tac_toe, connect_four   MCTS (uct_c 2, 10 random rollouts per leaf) with 100 and with
//                               1000 simulations, the model as first and as second player
//   kuhn_poker                  the CFR average policy after 1000 iterations (OpenSpiel's CFRSolver)
//   leduc_poker                 the Nash equilibrium policy (data/games/leduc_poker_nash.json)
//   mini / simple / full_hanabi the model on both seats: the pair's score
// Games run through play_matches (games/chat_match), so the model plays exactly as in self-play.
#include <functional>
#include <string>
#include <vector>

#include "games/chat_match.hpp"

namespace crossmoe::games {

// The games MARS evaluates on, in its order: trained, held out, and full Hanabi.
const std::vector<std::string>& mars_eval_games();

struct Matchup {
  std::string game;
  std::string opponent;    // "mcts-100", "mcts-1000", "cfr", "nash", or "self-play"
  int model_seat = 0;      // 0 first, 1 second; -1 every seat (self-play)
};

struct EvalSettings {
  int games_per_matchup = 100;           // MARS: 1500 games over its 15 matchups
  std::vector<int> mcts_simulations = {100, 1000};
  double mcts_uct_c = 2.0;
  int mcts_rollouts = 10;
  int cfr_iterations = 1000;
  MatchSettings match;                   // answer length, action limit, sampling, rewards
  uint64_t seed = 0;
  int batch = 1;                         // matches played at once (generator rows: 2 per match)
};

// MARS's matchups for `games` (each one a name from game_names()): two-player perfect-information
// games against MCTS at each of `mcts_simulations`, poker against cfr (Kuhn) or nash (Leduc), the
// model first and second; cooperative games in self-play. Throws Error for an unknown game or one
// without an evaluation opponent.
std::vector<Matchup> mars_matchups(const std::vector<std::string>& games, const std::vector<int>& mcts_simulations);

struct MatchupResult {
  Matchup matchup;
  int games = 0, wins = 0, draws = 0, losses = 0;  // from the model's seat (self-play: none)
  int forfeits = 0;             // games the model ended with an invalid, unparsable or over-long answer
  int answers = 0;              // the model's answers
  int64_t answer_tokens = 0;
  double mean_payoff = 0;       // the model seat's game payoff (self-play: the pair's score)
  double payoff_sd = 0;         // sample standard deviation
  bool cooperative = false;
};

// Plays settings.games_per_matchup games of every matchup, settings.batch at a time, through
// `generator` (which needs 2 * batch rows); `progress` sees games done and games in all.
std::vector<MatchupResult> evaluate_model(const std::vector<Matchup>& matchups, TokenGenerator& generator,
                                          ChatModel& chat, const EvalSettings& settings,
                                          const std::function<void(int done, int total)>& progress = {});

}  // namespace crossmoe::games
