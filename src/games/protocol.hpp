#pragma once
// The text protocol a model plays through, and MARS's rewards, exactly as the MARS code computes
// them (github.com/thu-nics/MARS at 5979f75c: roll/agentic/env/*/env.py for the environments,
// roll/agentic/rollout/env_manager.py for answers, format and length terms, and the run configs
// examples/*/agentic_val_*_selfplay.yaml for the values).
//
//   prompt:  turn_prompt(): the rules, the player's observation, the history, the legal actions
//            written as MARS writes them (answer_text: "<X(0,2)>", "<O(3)>", "<BET>",
//            "<RAISE>", "<Play card 0>", "<Reveal player +1 color R>"), and the answer format.
//   answer:  parse_answer(): the whole response must be <think>...</think> then
//            <answer>...</answer> and nothing after; the answer's first action (actions split
//            on "||") must equal a legal action's answer_text exactly. Anything else is invalid.
//
// How the RL loop (src/rl) builds one player's turn reward from these, as MARS's env manager
// does: after a valid answer the game moves on; the player's turn reward is
//     step_rewards(game, state)[player] + format_reward(true) + length_penalty(tokens)
// and each later move by someone else adds step_rewards(...)[player] of that move to the
// player's last turn (so a loss on the opponent's move lands on the loser's last turn). An
// invalid answer, a response of overlong_response_tokens or more, or one that leaves fewer than
// min_tokens_left of the context ends the game:
//     forfeit(game, state, player).rewards[p] + (p == player ? format_reward(false) + length_penalty(tokens) : 0)
// goes to every player p's last turn (0 to everyone else).
#include <string>
#include <vector>

#include "games/game.hpp"

namespace crossmoe::games {

struct MarsRewards {
  double draw = 0.1;           // a terminal step reward of exactly 0 becomes this (GameInfo says where)
  double forfeit_extra = 10;   // an invalid answer costs what the player stood to lose, plus this
  double format_penalty = 0.05;  // the configs' format_penalty: +max(it, 0) per valid turn, +min(it, 0) on a forfeit
  // env_manager's length_reward_scale: r = coef - (tokens - min_len) / (max_len - min_len), scaled by
  // `upper` when positive and `lower` when negative: with these values only responses longer
  // than 2048 tokens lose, 0.5 per 2037 tokens over.
  double length_coef = 1, length_upper = 0, length_lower = 0.5;
  int length_min = 11, length_max = 2048;
  int overlong_response_tokens = 4096;  // a response this long forfeits the game
  int min_tokens_left = 1000;           // so does one that leaves this few tokens (or fewer) of the sequence
};

// The reward vector of the move that led to `state` (MARS's env.step): OpenSpiel's rewards; at
// a terminal state of a game with GameInfo::zero_terminal_reward_is_draw, each 0 becomes `draw`.
std::vector<double> step_rewards(const Game& game, const State& state, const MarsRewards& r = {});

// `player` answered invalidly at `state` (MARS's get_losing_state): the game ends.
struct Forfeit {
  std::vector<double> rewards;  // -(forfeit_stake) - forfeit_extra for the player, 0 for the others
  std::vector<double> returns;  // the outcome that is scored: the player loses the stake to the
                                // opponent (Hanabi: the score so far, for everyone)
};
Forfeit forfeit(const Game& game, const State& state, int player, const MarsRewards& r = {});

double format_reward(bool answer_valid, const MarsRewards& r = {});
double length_penalty(int response_tokens, const MarsRewards& r = {});
// A response too long, or a context too full, to go on: MARS ends the game with a forfeit.
bool overlong(int response_tokens, int tokens_left, const MarsRewards& r = {});

// `action` at `state` as MARS writes it for the model (the player to move is state's).
std::string answer_text(const Game& game, const State& state, int action);

// What a turn's prompt (turn_prompt, and a seat's turn in a conversation) says after the
// observation: the moves so far (the history without the deals) and the legal actions, written as
// answer_text: "Moves so far:\n- ...\nLegal actions: <PASS> <BET>".
std::string moves_and_legal_actions(const Game& game, const State& state);

std::string turn_prompt(const Game& game, const State& state);

constexpr size_t kMaxAnswerBytes = 1 << 20;  // longer responses are invalid, not parsed

struct ParsedAnswer {
  int action = -1;       // -1 when invalid
  std::string error;     // why it is invalid
};
ParsedAnswer parse_answer(const std::string& response, const Game& game, const State& state);

// A person's move: an answer_text, OpenSpiel's action string or the action id; case and
// surrounding spaces do not matter.
ParsedAnswer parse_human_move(const std::string& line, const Game& game, const State& state);

}  // namespace crossmoe::games
