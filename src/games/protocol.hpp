#pragma once
// The text protocol a model plays through, and MARS's reward shaping.
//   prompt:  the rules, the player's observation, the history, the legal actions, and the
//            required answer format <think>...</think><answer>ACTION</answer>
//   answer:  the last <answer>...</answer> block (a <think> block before it is optional);
//            its text, trimmed, must name a legal action (case does not matter). Anything
//            else is invalid and loses the game for that player.
//   rewards: win +1, loss -1, draw 0.1, +0.05 for every valid turn; an invalid answer scores
//            -11 instead and ends the game (the opponent wins; in cooperative games, both lose).
//            In cooperative games (Hanabi) the outcome part is the shared score itself.
#include <optional>
#include <string>

#include "games/game.hpp"

namespace crossmoe::games {

struct RewardShaping {
  double win = 1.0, loss = -1.0, draw = 0.1, valid_turn = 0.05, invalid = -11.0;
};

constexpr size_t kMaxAnswerBytes = 16384;  // longer answers are invalid, not parsed

std::string turn_prompt(const GameInfo& info, const State& state);

struct ParsedAnswer {
  int action = -1;       // -1 when invalid
  std::string error;     // why it is invalid
};
ParsedAnswer parse_answer(const std::string& text, const State& state);

}  // namespace crossmoe::games
