#pragma once
// Games for self-play RL, with one interface (modelled on OpenSpiel's, whose rules they follow):
// players, whose turn, legal actions, chance outcomes, per-player observations that hide what
// a player may not see, apply, terminal, returns.
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
  virtual std::vector<double> returns() const = 0;                         // at terminal states
  virtual std::string action_to_string(int action) const = 0;
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

struct GameInfo {
  std::string name;
  std::string rules;          // for the model's prompt
  bool perfect_information;
  bool cooperative;
  int num_players;
};

class Game {
 public:
  virtual ~Game() = default;
  virtual const GameInfo& info() const = 0;
  virtual std::unique_ptr<State> initial_state() const = 0;
};

using GameParameters = std::map<std::string, int>;
// "hanabi" or, with parameters, "hanabi(colors=2,ranks=5,hand_size=2)" (OpenSpiel's game
// strings); mini_hanabi and simple_hanabi are Hanabi with small presets (game.cpp says which). Throws Error listing the known games, or naming a bad parameter.
std::unique_ptr<Game> make_game(const std::string& spec);
std::vector<std::string> game_names();

}  // namespace crossmoe::games
