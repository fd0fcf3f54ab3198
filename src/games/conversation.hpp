#pragma once
// A seat's game as a chat conversation, the form a model plays in (and is trained on): a system
// message with the rules, the seat and the answer format; then, for each of the seat's turns, a
// user message (what the seat sees, the moves so far, the legal actions) and the seat's answer
// <think>...</think><answer>ACTION</answer>. The conversation only grows, so a model's KV cache
// carries over from turn to turn (MARS plays the same way: one multi-turn dialogue per player).
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "games/agents.hpp"
#include "games/game.hpp"

namespace crossmoe::games {

std::string seat_system_message(const GameInfo& info, int seat);
// Legal actions are written as the protocol's answer_text (what an answer must say).
std::string seat_turn_message(const Game& game, const State& state, int seat);
// A short reasoning and the answer for `action`, as a reference player's reply.
std::string reference_answer(const Game& game, const State& state, int action, const std::string& player_name);

// Plays one game between reference agents and returns each seat's conversation (messages with
// role and content); seats that never moved get none. Chance outcomes are drawn from rng.
std::vector<nlohmann::ordered_json> play_transcript(const Game& game, const std::vector<Agent*>& agents, Rng& rng);

}  // namespace crossmoe::games
