#include "games/game.hpp"

#include <functional>
#include <map>

#include "games/games_impl.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

std::vector<double> State::rewards() const {
  return is_terminal() ? returns() : std::vector<double>(size_t(num_players()), 0.0);
}

namespace {

using Factory = std::function<std::unique_ptr<Game>(const GameParameters&)>;

// The two-player games take OpenSpiel's `players` parameter only at its value 2, as MARS plays
// them ("kuhn_poker(players=2)" is the game of OpenSpiel's kuhn_poker_2p playthrough).
template <std::unique_ptr<Game> (*make)()>
std::unique_ptr<Game> two_player(const GameParameters& params) {
  for (const auto& [key, value] : params)
    require(key == "players" && value == 2, key == "players" ? "only players=2 is supported"
                                                             : "unknown parameter '" + key + "' (players=2)");
  return make();
}

template <std::unique_ptr<Game> (*make)()>
std::unique_ptr<Game> without_parameters(const GameParameters& params) {
  require(params.empty(), "this game takes no parameters");
  return make();
}

// Hanabi under a preset name: MARS's parameters, which the game string may override.
Factory hanabi_preset(const std::string& name, GameParameters preset) {
  return [name, preset](const GameParameters& params) {
    GameParameters merged = preset;
    for (const auto& [key, value] : params) merged[key] = value;
    return make_hanabi(merged, name);
  };
}

const std::map<std::string, Factory>& registry() {
  // MARS's Hanabi settings (roll/agentic/env/hanabi/config.py and the evaluation tags
  // MiniHanabi, SimpleHanabi and FullHanabi of examples/hanabi/agentic_val_hanabi_selfplay.yaml):
  // two players; mini trains, simple is held out, full is an extra evaluation.
  static const std::map<std::string, Factory> games = {
      {"tic_tac_toe", without_parameters<make_tic_tac_toe>},
      {"connect_four", without_parameters<make_connect_four>},
      {"kuhn_poker", two_player<make_kuhn_poker>},
      {"leduc_poker", two_player<make_leduc_poker>},
      {"hanabi", [](const GameParameters& params) { return make_hanabi(params, "hanabi"); }},
      {"mini_hanabi", hanabi_preset("mini_hanabi", {{"players", 2},
                                                    {"colors", 2},
                                                    {"ranks", 2},
                                                    {"hand_size", 3},
                                                    {"max_information_tokens", 3},
                                                    {"max_life_tokens", 3}})},
      {"simple_hanabi", hanabi_preset("simple_hanabi", {{"players", 2},
                                                        {"colors", 3},
                                                        {"ranks", 2},
                                                        {"hand_size", 5},
                                                        {"max_information_tokens", 8},
                                                        {"max_life_tokens", 3}})},
      {"full_hanabi", hanabi_preset("full_hanabi", {{"players", 2},
                                                    {"colors", 3},
                                                    {"ranks", 3},
                                                    {"hand_size", 5},
                                                    {"max_information_tokens", 8},
                                                    {"max_life_tokens", 3}})},
      {"tiny_hanabi", without_parameters<make_tiny_hanabi>}};
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
