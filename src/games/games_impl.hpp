#pragma once
// Internal: the constructors of each game, for the registry.
#include "games/game.hpp"

namespace crossmoe::games {

template <class S>
class SimpleGame : public Game {
 public:
  explicit SimpleGame(GameInfo info) : info_(std::move(info)) {}
  const GameInfo& info() const override { return info_; }
  std::unique_ptr<State> initial_state() const override { return std::make_unique<S>(); }

 private:
  GameInfo info_;
};

template <class S>
std::unique_ptr<Game> make_simple_game(GameInfo info) {
  return std::make_unique<SimpleGame<S>>(std::move(info));
}

std::unique_ptr<Game> make_tic_tac_toe();
std::unique_ptr<Game> make_connect_four();
std::unique_ptr<Game> make_kuhn_poker();
std::unique_ptr<Game> make_leduc_poker();
// `name` is what the game is called (a preset's name or "hanabi").
std::unique_ptr<Game> make_hanabi(const GameParameters& params, const std::string& name);
std::unique_ptr<Game> make_tiny_hanabi();

}  // namespace crossmoe::games
