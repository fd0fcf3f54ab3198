#pragma once
// Games for self-play RL, with one interface modelled on OpenSpiel's, whose rules, action ids,
// chance outcomes, per-step rewards and returns they follow (tests/test_games_playthroughs.cpp
// replays OpenSpiel's recorded games): players, whose turn, legal actions, chance outcomes,
// per-player observations that hide what a player may not see, apply, terminal, returns.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace crossmoe::games {

constexpr int kChancePlayer = -1;
constexpr int kTerminalPlayer = -4;

class State {
 public:
  virtual ~State() = default;
  virtual int num_players() const = 0;
  virtual int current_player() const = 0;  // a player, kChancePlayer or kTerminalPlayer
  bool is_terminal() const { return current_player() == kTerminalPlayer; }
  bool is_chance() const { return current_player() == kChancePlayer; }
  virtual std::vector<int> legal_actions() const = 0;                      // sorted
  virtual std::vector<std::pair<int, double>> chance_outcomes() const { return {}; }
  virtual void apply(int action) = 0;
  // What each player has won so far (OpenSpiel's Returns): the payoffs at a terminal state;
  // before it, 0 in the games that pay at the end and the current score in Hanabi.
  virtual std::vector<double> returns() const = 0;
  // What each player gained with the last move (OpenSpiel's Rewards): the returns at a
  // terminal state in games that pay at the end, the change of the score in Hanabi.
  virtual std::vector<double> rewards() const;
  // What `player` would lose by forfeiting now: the base of MARS's invalid-answer penalty
  // (protocol.hpp): 1 in the board games, the chips the player has put in the pot in poker,
  // the score earned so far in Hanabi.
  virtual double forfeit_stake(int player) const = 0;
  // OpenSpiel's ActionToString for the player to move (or chance): "x(1,2)", "Bet", "(Play 0)".
  virtual std::string action_to_string(int action) const = 0;
  // The whole state, hidden cards included, for people: the board, both hands, the result.
  virtual std::string to_string() const = 0;
  // What `player` knows, as text for a model: their own cards, public cards, the board.
  virtual std::string observation(int player) const = 0;
  // A key for everything `player` has seen (perfect recall): CFR's information-state key.
  virtual std::string information_state(int player) const = 0;
  virtual std::unique_ptr<State> clone() const = 0;
  // Actions taken so far, as text (chance outcomes hidden from `player` shown as "?").
  const std::vector<std::string>& history_text() const { return history_; }

 protected:
  std::vector<std::string> history_;
};

using GameParameters = std::map<std::string, int>;

struct GameInfo {
  std::string name;            // as registered: "tic_tac_toe", "mini_hanabi", ...
  std::string family;          // OpenSpiel's game it plays: "hanabi" for every Hanabi preset
  std::string rules;           // for the model's prompt
  bool perfect_information = true;
  bool cooperative = false;    // every player gets the same payoff (Hanabi)
  int num_players = 2;
  int num_distinct_actions = 0;  // action ids are 0 .. num_distinct_actions - 1 (OpenSpiel's count)
  int max_chance_outcomes = 0;
  double min_utility = 0, max_utility = 0;
  GameParameters parameters;   // every parameter with the value in force (none for fixed games)
  // MARS's environment turns a terminal reward of exactly 0 into the draw value
  // (protocol.hpp): its Tic-Tac-Toe, Connect Four and Hanabi environments do, the poker ones not.
  bool zero_terminal_reward_is_draw = false;
};

class Game {
 public:
  virtual ~Game() = default;
  virtual const GameInfo& info() const = 0;
  virtual std::unique_ptr<State> initial_state() const = 0;
};

// "hanabi" or, with parameters, "hanabi(colors=2,ranks=5,hand_size=2)" (OpenSpiel's game
// strings). mini_hanabi, simple_hanabi and full_hanabi are Hanabi with MARS's parameters
// (game.cpp), which a game string may still override. Throws Error listing the known games,
// or naming a bad parameter.
std::unique_ptr<Game> make_game(const std::string& spec);
std::vector<std::string> game_names();

}  // namespace crossmoe::games
