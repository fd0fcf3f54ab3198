#include "games/game.hpp"

#include <functional>
#include <map>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

namespace {

template <std::unique_ptr<Game> (*make)()>
std::unique_ptr<Game> without_parameters(const GameParameters& params) {
  require(params.empty(), "this game takes no parameters");
  return make();
}

// Hanabi with preset parameters that the game string may still override. MARS trains on "Mini
// Hanabi" and holds out "Simple Hanabi"; its exact parameters could not be checked here, so these
// are the Hanabi Learning Environment's two small presets: Hanabi-Very-Small (one colour) and
// Hanabi-Small (two colours), both five ranks, hands of 2, 3 information tokens, 1 life.
std::function<std::unique_ptr<Game>(const GameParameters&)> hanabi_preset(GameParameters preset) {
  return [preset](const GameParameters& params) {
    GameParameters merged = preset;
    for (const auto& [key, value] : params) merged[key] = value;
    return make_hanabi(merged);
  };
}

const std::map<std::string, std::function<std::unique_ptr<Game>(const GameParameters&)>>& registry() {
  static const std::map<std::string, std::function<std::unique_ptr<Game>(const GameParameters&)>> games = {
      {"tic_tac_toe", without_parameters<make_tic_tac_toe>},
      {"connect_four", without_parameters<make_connect_four>},
      {"kuhn_poker", without_parameters<make_kuhn_poker>},
      {"leduc_poker", without_parameters<make_leduc_poker>},
      {"hanabi", make_hanabi},
      {"mini_hanabi",
       hanabi_preset({{"colors", 1}, {"ranks", 5}, {"hand_size", 2}, {"max_information_tokens", 3}, {"max_life_tokens", 1}})},
      {"simple_hanabi",
       hanabi_preset({{"colors", 2}, {"ranks", 5}, {"hand_size", 2}, {"max_information_tokens", 3}, {"max_life_tokens", 1}})}};
  return games;
}

// "name" or "name(key=value,key=value)", as OpenSpiel writes game strings.
std::pair<std::string, GameParameters> parse_game_string(const std::string& spec) {
  const size_t open = spec.find('(');
  if (open == std::string::npos) return {spec, {}};
  require(spec.back() == ')', "game '" + spec + "': parameters must end with ')'");
  GameParameters params;
  std::string body = spec.substr(open + 1, spec.size() - open - 2);
  size_t at = 0;
  while (at < body.size()) {
    size_t comma = body.find(',', at);
    if (comma == std::string::npos) comma = body.size();
    const std::string item = body.substr(at, comma - at);
    const size_t eq = item.find('=');
    require(eq != std::string::npos && eq > 0, "game '" + spec + "': expected key=value, got '" + item + "'");
    try {
      size_t used = 0;
      params[item.substr(0, eq)] = std::stoi(item.substr(eq + 1), &used);
      require(used == item.size() - eq - 1, "");
    } catch (const std::exception&) {
      throw Error("game '" + spec + "': '" + item.substr(eq + 1) + "' is not an integer");
    }
    at = comma + 1;
  }
  return {spec.substr(0, open), params};
}

}  // namespace

std::vector<std::string> game_names() {
  std::vector<std::string> out;
  for (const auto& [name, make] : registry()) out.push_back(name);
  return out;
}

std::unique_ptr<Game> make_game(const std::string& spec) {
  const auto [name, params] = parse_game_string(spec);
  auto it = registry().find(name);
  if (it == registry().end()) {
    std::string list;
    for (const auto& n : game_names()) list += (list.empty() ? "" : ", ") + n;
    throw Error("unknown game '" + name + "' (known: " + list + ")");
  }
  try {
    return it->second(params);
  } catch (const Error& e) {
    throw Error(name + ": " + e.what());
  }
}

}  // namespace crossmoe::games
