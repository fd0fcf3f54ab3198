// Tiny Hanabi, OpenSpiel's two-player cooperative card game with its default payoff table:
// chance deals each player a card (1 or 2, uniformly); player 0, seeing only their own card,
// picks one of three actions; player 1, seeing their own card and player 0's action, picks
// one; both get the payoff of (card 0, card 1, action 0, action 1). Not the Hanabi of the
// Hanabi Learning Environment: a one-shot signalling game for testing cooperative learning.
#include <algorithm>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {

constexpr int kCards = 2, kActions = 3;
// Indexed by ((card0 * kCards + card1) * kActions + action0) * kActions + action1: OpenSpiel's
// default payoff string, row by row.
constexpr int kPayoff[kCards * kCards * kActions * kActions] = {
    10, 0, 0, 4, 8, 4, 10, 0, 0,   // cards 1, 1
    0,  0, 10, 4, 8, 4, 0, 0, 10,  // cards 1, 2
    0,  0, 10, 4, 8, 4, 0, 0, 0,   // cards 2, 1
    10, 0, 0, 4, 8, 4, 10, 0, 0};  // cards 2, 2

class TinyHanabiState : public State {
 public:
  int num_players() const override { return 2; }
  int current_player() const override {
    if (moves_.size() < 2) return kChancePlayer;
    if (moves_.size() == 4) return kTerminalPlayer;
    return int(moves_.size()) - 2;
  }
  std::vector<int> legal_actions() const override {
    if (is_terminal()) return {};
    std::vector<int> out(size_t(is_chance() ? kCards : kActions));
    for (size_t i = 0; i < out.size(); ++i) out[i] = int(i);
    return out;
  }
  std::vector<std::pair<int, double>> chance_outcomes() const override {
    if (!is_chance()) return {};
    return {{0, 1.0 / kCards}, {1, 1.0 / kCards}};
  }
  void apply(int action) override {
    const auto legal = legal_actions();
    require(std::find(legal.begin(), legal.end(), action) != legal.end(), "illegal action " + std::to_string(action));
    history_.push_back(is_chance() ? "deal" : "Player " + std::to_string(current_player()) + ": " + action_to_string(action));
    moves_.push_back(action);
  }
  std::vector<double> returns() const override {
    if (!is_terminal()) return {0.0, 0.0};
    const double v = kPayoff[((moves_[0] * kCards + moves_[1]) * kActions + moves_[2]) * kActions + moves_[3]];
    return {v, v};
  }
  double forfeit_stake(int player) const override { return returns()[size_t(player)]; }
  std::string action_to_string(int action) const override {
    if (is_chance()) return 'd' + std::to_string(action);
    return 'p' + std::to_string(current_player()) + "a" + std::to_string(action);
  }
  std::string observation(int player) const override {
    std::string s = "Your card: " + std::to_string(moves_[size_t(player)] + 1) + ".\n";
    if (moves_.size() > 2 && player == 1) s += "Player 0 chose action " + std::to_string(moves_[2]) + ".\n";
    return s;
  }
  std::string information_state(int player) const override {  // OpenSpiel's: "p1:d0 p0:a2"
    std::string key = 'p' + std::to_string(player);
    if (moves_.size() > size_t(player)) key += ":d" + std::to_string(moves_[size_t(player)]);
    for (size_t i = 2; i < moves_.size(); ++i) key += " p" + std::to_string(i - 2) + ":a" + std::to_string(moves_[i]);
    return key;
  }
  std::string to_string() const override {
    std::string s = "Cards:";
    for (size_t i = 0; i < moves_.size() && i < 2; ++i) s += " player " + std::to_string(i) + " " + std::to_string(moves_[i] + 1);
    s += "\nActions:";
    for (size_t i = 2; i < moves_.size(); ++i) s += " player " + std::to_string(i - 2) + " " + std::to_string(moves_[i]);
    return s + "\n";
  }
  std::unique_ptr<State> clone() const override { return std::make_unique<TinyHanabiState>(*this); }

 private:
  std::vector<int> moves_;  // card of player 0, card of player 1, action of player 0, of player 1
};

}  // namespace

std::unique_ptr<Game> make_tiny_hanabi() {
  GameInfo info;
  info.name = info.family = "tiny_hanabi";
  info.rules =
      "Tiny Hanabi, a cooperative two-player game. Each player is dealt a card, 1 or 2, that only they see. "
      "Player 0 picks action 0, 1 or 2; then player 1, who sees that action and their own card, picks action "
      "0, 1 or 2. Both players get the same payoff, from 0 to 10, which depends on both cards and both actions.";
  info.perfect_information = false;
  info.cooperative = true;
  info.num_distinct_actions = kActions;
  info.max_chance_outcomes = kCards;
  info.min_utility = 0, info.max_utility = 10;
  return make_simple_game<TinyHanabiState>(info);
}

}  // namespace crossmoe::games
