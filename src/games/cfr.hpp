#pragma once
// Counterfactual regret minimisation over the full game tree, chance outcomes enumerated, with
// alternating updates: CFR+ (regrets floored at zero, linearly weighted average strategy) or
// vanilla CFR (regrets kept signed, uniformly weighted average), the two of OpenSpiel's
// CFRPlusSolver and CFRSolver; and the measures that say how good a policy is: expected value
// and exploitability.
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "games/game.hpp"

namespace crossmoe::games {

// information state -> (action, probability) for each legal action
using Policy = std::map<std::string, std::vector<std::pair<int, double>>>;

class CfrSolver {
 public:
  enum class Variant { CfrPlus, Cfr };
  explicit CfrSolver(const Game& game, Variant variant = Variant::CfrPlus);
  void iterate(int iterations = 1);
  int iterations() const { return iteration_; }
  Policy average_policy() const;

 private:
  struct InfoNode {
    std::vector<int> actions;
    std::vector<double> regret, strategy_sum;
    std::vector<double> pending;   // regret gained in the current traversal, applied at its end
    std::vector<double> strategy;  // regret matching of `regret`, refreshed when regrets change
  };
  double traverse(const State& s, int player, double reach_player, double reach_others);
  const Game& game_;
  Variant variant_;
  std::unordered_map<std::string, InfoNode> nodes_;  // node-based: references survive inserts
  int iteration_ = 0;
};

// The probabilities a policy gives at a state (uniform over legal actions where it has none).
std::vector<std::pair<int, double>> policy_at(const Policy& policy, const State& state);
// Expected returns when every player follows `policy`.
std::vector<double> expected_returns(const Game& game, const Policy& policy);
// What `player` gets by best-responding to everyone else playing `policy`.
double best_response_value(const Game& game, const Policy& policy, int player);
// Two-player zero-sum: (best response value of player 0 + of player 1) / 2; zero at a Nash equilibrium.
double exploitability(const Game& game, const Policy& policy);

// CFR walks the whole game tree every iteration: it is for two-player zero-sum games of
// imperfect information with small trees (kuhn_poker, leduc_poker). Throws Error saying why
// not (and what to use instead) for any other game, before any work.
void require_cfr_solvable(const Game& game);

// Policy files: {"game": NAME, "policy": {INFORMATION STATE: [[action, probability], ...]}}.
void write_policy_file(const std::string& path, const Game& game, const Policy& policy);
// Reads and checks a policy for `game` (`source` names it in errors): every information state
// is one of the game's, its moves are exactly the legal actions there, each probability is
// finite and >= 0 and they sum to 1 (within 1e-4; then normalised).
Policy parse_policy(const std::string& text, const Game& game, const std::string& source);
Policy read_policy_file(const std::string& path, const Game& game);

// The Nash equilibrium that ships with crossmoe for leduc_poker (MARS's Leduc opponent):
// data/games/leduc_poker_nash.json, made by our CFR+ (docs/games.md says how), compiled in.
Policy nash_policy(const Game& game);

}  // namespace crossmoe::games
