#include "games/game.hpp"

#include <functional>
#include <map>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {
const std::map<std::string, std::function<std::unique_ptr<Game>()>>& registry() {
  static const std::map<std::string, std::function<std::unique_ptr<Game>()>> games = {
      {"tic_tac_toe", make_tic_tac_toe},
      {"connect_four", make_connect_four},
      {"kuhn_poker", make_kuhn_poker},
      {"leduc_poker", make_leduc_poker},
      {"hanabi", make_hanabi}};
  return games;
}
}  // namespace

std::vector<std::string> game_names() {
  std::vector<std::string> out;
  for (const auto& [name, make] : registry()) out.push_back(name);
  return out;
}

std::unique_ptr<Game> make_game(const std::string& name) {
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string list;
    for (const auto& n : game_names()) list += (list.empty() ? "" : ", ") + n;
    throw Error("unknown game '" + name + "' (known: " + list + ")");
  }
  return it->second();
}

}  // namespace crossmoe::games
