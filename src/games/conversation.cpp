#include "games/conversation.hpp"

#include <algorithm>

#include "games/protocol.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

std::string seat_system_message(const GameInfo& info, int seat) {
  return "You are playing " + info.name + ".\n\nRules: " + info.rules + "\n\nYou are Player " + std::to_string(seat) +
         ". On each of your turns you see the game and the legal actions. Think, then answer with exactly one "
         "legal action, in this format:\n<think>your reasoning</think><answer>ACTION</answer>";
}

std::string seat_turn_message(const Game& game, const State& state, int seat) {
  std::string m = state.observation(seat);
  if (!m.empty() && m.back() != '\n') m += "\n";
  m += moves_and_legal_actions(game, state);
  return m;
}

std::string reference_answer(const Game& game, const State& state, int action, const std::string& player_name) {
  std::string legal;
  for (int a : state.legal_actions()) legal += (legal.empty() ? "" : ", ") + answer_text(game, state, a);
  const std::string move = answer_text(game, state, action);
  return "<think>The legal actions are " + legal + ". The " + player_name + " player's choice here is " + move +
         ".</think><answer>" + move + "</answer>";
}

std::vector<nlohmann::ordered_json> play_transcript(const Game& game, const std::vector<Agent*>& agents, Rng& rng) {
  auto state = game.initial_state();
  const int n = state->num_players();
  require(int(agents.size()) == n, "this game needs " + std::to_string(n) + " players");
  std::vector<nlohmann::ordered_json> seats(size_t(n), nlohmann::ordered_json::array());
  while (!state->is_terminal()) {
    if (state->is_chance()) {
      apply_chance_outcome(*state, rng);
      continue;
    }
    const int seat = state->current_player();
    auto& messages = seats[size_t(seat)];
    if (messages.empty()) messages.push_back({{"role", "system"}, {"content", seat_system_message(game.info(), seat)}});
    messages.push_back({{"role", "user"}, {"content", seat_turn_message(game, *state, seat)}});
    const int action = agents[size_t(seat)]->act(game, *state, rng);
    const auto legal = state->legal_actions();
    require(std::find(legal.begin(), legal.end(), action) != legal.end(),
            "the " + agents[size_t(seat)]->name() + " player chose an illegal action");
    messages.push_back({{"role", "assistant"}, {"content", reference_answer(game, *state, action, agents[size_t(seat)]->name())}});
    state->apply(action);
  }
  return seats;
}

}  // namespace crossmoe::games
