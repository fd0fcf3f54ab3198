// The text protocol and MARS's rewards, case by case against what the MARS code computes
// (roll/agentic/env/*/env.py, roll/agentic/rollout/env_manager.py, the run configs).
#include <gtest/gtest.h>

#include "games/arena.hpp"
#include "games/conversation.hpp"
#include "games/protocol.hpp"
#include "util/error.hpp"

using namespace crossmoe;
using namespace crossmoe::games;

namespace {

std::unique_ptr<State> play(const Game& game, const std::vector<int>& actions) {
  auto s = game.initial_state();
  for (int a : actions) s->apply(a);
  return s;
}

TEST(MarsRewards, TerminalRewardsAndTheDrawValue) {
  const auto ttt = make_game("tic_tac_toe");
  // A draw pays 0 to both; MARS's Tic-Tac-Toe makes it 0.1.
  EXPECT_EQ(step_rewards(*ttt, *play(*ttt, {0, 1, 2, 4, 3, 5, 7, 6, 8})), (std::vector<double>{0.1, 0.1}));
  EXPECT_EQ(step_rewards(*ttt, *play(*ttt, {0, 3, 1, 4, 2})), (std::vector<double>{1, -1}));
  EXPECT_EQ(step_rewards(*ttt, *play(*ttt, {0, 3})), (std::vector<double>{0, 0}));  // not over: no draw value
  // Leduc's split pot stays 0: MARS's poker environments keep OpenSpiel's rewards as they are.
  const auto leduc = make_game("leduc_poker");
  // J (0) vs J (1), public Q (2); check, check in both rounds: a tie.
  EXPECT_EQ(step_rewards(*leduc, *play(*leduc, {0, 1, 1, 1, 2, 1, 1})), (std::vector<double>{0, 0}));
  const auto kuhn = make_game("kuhn_poker");
  EXPECT_EQ(step_rewards(*kuhn, *play(*kuhn, {2, 0, 1, 1})), (std::vector<double>{2, -2}));
  // Hanabi: the change of the score each move; at the end a 0 becomes 0.1 for everyone.
  const auto hanabi = make_game("hanabi");  // cards: color * 5 + rank - 1
  auto s = play(*hanabi, {0, 0, 0, 1, 1, 2, 2, 3, 3, 4});  // player 0: R1 R1 R1 R2 R2; player 1: R3 R3 R4 R4 R5
  s->apply(5);  // player 0 plays R1
  EXPECT_EQ(step_rewards(*hanabi, *s), (std::vector<double>{1, 1}));
  for (int play_card : {5 + 1, 5 + 1, 5}) {  // R3, then R1, then R3: three wrong plays
    s->apply(5);                              // the draw (Y1)
    s->apply(play_card);
  }
  ASSERT_TRUE(s->is_terminal());
  EXPECT_EQ(step_rewards(*hanabi, *s), (std::vector<double>{-1, -1}));  // the point is lost with the lives
  // Lives run out before any point: the final reward is 0, which MARS turns into 0.1.
  s = play(*hanabi, {1, 1, 2, 2, 3, 3, 4, 6, 6, 7});  // player 0: R2 R2 R3 R3 R4; player 1: R4 R5 Y2 Y2 Y3
  for (int turn = 0; turn < 3; ++turn) {
    s->apply(5);  // play the first card: never an R1
    if (s->is_chance()) s->apply(0);
  }
  ASSERT_TRUE(s->is_terminal());
  EXPECT_EQ(s->rewards(), (std::vector<double>{0, 0}));
  EXPECT_EQ(step_rewards(*hanabi, *s), (std::vector<double>{0.1, 0.1}));
}

TEST(MarsRewards, InvalidAnswersForfeitWhatWasAtStake) {
  const auto ttt = make_game("tic_tac_toe");
  Forfeit f = forfeit(*ttt, *play(*ttt, {4}), 1);
  EXPECT_EQ(f.rewards, (std::vector<double>{0, -11}));
  EXPECT_EQ(f.returns, (std::vector<double>{1, -1}));
  const auto c4 = make_game("connect_four");
  EXPECT_EQ(forfeit(*c4, *c4->initial_state(), 0).rewards, (std::vector<double>{-11, 0}));
  // Kuhn: player 0 bet (2 chips in), player 1 to act has 1 in.
  const auto kuhn = make_game("kuhn_poker");
  auto s = play(*kuhn, {0, 1, 1});
  EXPECT_EQ(forfeit(*kuhn, *s, 1).rewards, (std::vector<double>{0, -11}));
  EXPECT_EQ(forfeit(*kuhn, *s, 1).returns, (std::vector<double>{1, -1}));
  EXPECT_EQ(forfeit(*kuhn, *s, 0).rewards, (std::vector<double>{-12, 0}));  // the bettor risks 2
  // Leduc: raise (3 in), raise (5 in): player 0 to act has 3 at stake.
  const auto leduc = make_game("leduc_poker");
  f = forfeit(*leduc, *play(*leduc, {0, 2, 2, 2}), 0);
  EXPECT_EQ(f.rewards, (std::vector<double>{-13, 0}));
  EXPECT_EQ(f.returns, (std::vector<double>{-3, 3}));
  // Hanabi: -(score so far) - 10 for the player, 0 for the partner; the score stands.
  const auto mini = make_game("mini_hanabi");
  auto h = play(*mini, {0, 0, 1, 2, 2, 3, 3, 0});  // player 0 played R1 and drew: score 1
  f = forfeit(*mini, *h, 1);
  EXPECT_EQ(f.rewards, (std::vector<double>{0, -11}));
  EXPECT_EQ(f.returns, (std::vector<double>{1, 1}));
}

TEST(MarsRewards, FormatAndLengthTerms) {
  EXPECT_DOUBLE_EQ(format_reward(true), 0.05);
  EXPECT_DOUBLE_EQ(format_reward(false), 0.0);
  MarsRewards negative;
  negative.format_penalty = -0.1;  // a negative setting penalises invalid turns instead
  EXPECT_DOUBLE_EQ(format_reward(true, negative), 0.0);
  EXPECT_DOUBLE_EQ(format_reward(false, negative), -0.1);
  // 1 - (tokens - 11) / 2037: positive below 2048 tokens (scaled by 0), negative above (by 0.5).
  EXPECT_DOUBLE_EQ(length_penalty(20), 0.0);
  EXPECT_DOUBLE_EQ(length_penalty(2048), 0.0);
  EXPECT_DOUBLE_EQ(length_penalty(2048 + 2037), -0.5);
  EXPECT_DOUBLE_EQ(length_penalty(2048 + 2 * 2037), -1.0);
  EXPECT_FALSE(overlong(4095, 1001));
  EXPECT_TRUE(overlong(4096, 5000));
  EXPECT_TRUE(overlong(10, 1000));
}

TEST(Protocol, AnswersAsMarsWritesThem) {
  const auto ttt = make_game("tic_tac_toe");
  auto s = play(*ttt, {4});
  EXPECT_EQ(answer_text(*ttt, *s, 2), "<O(0,2)>");
  EXPECT_EQ(s->action_to_string(2), "o(0,2)");  // OpenSpiel's own spelling
  const auto c4 = make_game("connect_four");
  EXPECT_EQ(answer_text(*c4, *c4->initial_state(), 3), "<X(3)>");
  const auto kuhn = make_game("kuhn_poker");
  EXPECT_EQ(answer_text(*kuhn, *play(*kuhn, {0, 1}), 1), "<BET>");
  const auto leduc = make_game("leduc_poker");
  EXPECT_EQ(answer_text(*leduc, *play(*leduc, {0, 1, 2}), 0), "<FOLD>");
  const auto mini = make_game("mini_hanabi");
  auto h = play(*mini, {0, 0, 1, 2, 2, 3});
  EXPECT_EQ(answer_text(*mini, *h, 3), "<Play card 0>");
  EXPECT_EQ(answer_text(*mini, *h, 6), "<Reveal player +1 color R>");
  EXPECT_EQ(answer_text(*mini, *h, 9), "<Reveal player +1 rank 2>");
  h->apply(3);
  h->apply(0);
  EXPECT_EQ(answer_text(*mini, *h, 0), "<Discard card 0>");
}

TEST(Protocol, ParsesAnswersStrictlyAsMars) {
  const auto kuhn = make_game("kuhn_poker");
  auto s = play(*kuhn, {1, 2});
  const auto action = [&](const std::string& text) { return parse_answer(text, *kuhn, *s).action; };
  EXPECT_EQ(action("<think>Q is middling.</think><answer><BET></answer>"), 1);
  EXPECT_EQ(action("<think>\nhmm\n</think>\n  <answer> <PASS> </answer>\n"), 0);  // spaces; one final newline
  EXPECT_EQ(action("<think>a</think><answer><PASS> || <BET></answer>"), 0);          // the first action counts
  EXPECT_EQ(action("<think>a</think><answer> || <BET> || <PASS></answer>"), 1);      // the first non-empty one
  EXPECT_EQ(action("<think>a</think><answer> || </answer>"), -1);
  EXPECT_EQ(action("<think>a</think><answer><|im_end|><BET></answer>"), 1);          // special tokens dropped
  EXPECT_EQ(action("<think>a</think> x <answer><BET></answer>"), -1);   // text between the blocks
  EXPECT_EQ(action("<answer><BET></answer>"), -1);                     // no think block
  EXPECT_EQ(action("<think>a</think><answer><BET></answer> done"), -1);  // text after the answer
  EXPECT_EQ(action("<think>a</think><answer><BET></answer>\n\n"), -1);   // more than one final newline
  EXPECT_EQ(action("<think>a</think><answer><bet></answer>"), -1);       // case matters
  EXPECT_EQ(action("<think>a</think><answer>BET</answer>"), -1);         // the brackets are part of it
  EXPECT_EQ(action("<think>a</think><answer><RAISE></answer>"), -1);     // not a Kuhn action
  EXPECT_EQ(action("<think>a</think><answer></answer>"), -1);            // empty
  EXPECT_EQ(action("<think>never closed <answer><BET></answer>"), -1);
  // A think block may mention the tags; the first </think> followed by <answer> ends it.
  EXPECT_EQ(action("<think>I'll write </think> later</think><answer><BET></answer>"), 1);
  EXPECT_EQ(action("<think>" + std::string(kMaxAnswerBytes, 'x') + "</think><answer><BET></answer>"), -1);
  EXPECT_NE(parse_answer("<answer><BET></answer>", *kuhn, *s).error.find("<think>"), std::string::npos);
  const std::string prompt = turn_prompt(*kuhn, *s);
  EXPECT_NE(prompt.find("Your card: Q"), std::string::npos);
  EXPECT_NE(prompt.find("Legal actions: <PASS> <BET>"), std::string::npos);
  // A person may type the action as listed, OpenSpiel's name or its number, in any case.
  for (const char* typed : {"<bet>", " Bet ", "1"}) EXPECT_EQ(parse_human_move(typed, *kuhn, *s).action, 1) << typed;
  EXPECT_EQ(parse_human_move("raise", *kuhn, *s).action, -1);
}

// The moves so far and the legal actions, as the turn prompt and a seat's turn message both
// write them after the observation (the text as the prompts wrote it before they shared it).
TEST(Protocol, TurnPromptAndSeatTurnWriteTheMovesAndLegalActionsAlike) {
  const auto kuhn = make_game("kuhn_poker");
  EXPECT_EQ(moves_and_legal_actions(*kuhn, *play(*kuhn, {1, 2})), "No moves have been made yet.\nLegal actions: <PASS> <BET>");
  const auto s = play(*kuhn, {1, 2, 0, 1});  // Q and K dealt (not listed), Pass, Bet
  const std::string part = "Moves so far:\n- Player 0: Pass\n- Player 1: Bet\nLegal actions: <PASS> <BET>";
  EXPECT_EQ(moves_and_legal_actions(*kuhn, *s), part);
  const std::string observation = "Your card: Q.\nChips in the pot: you 1, opponent 2.\n";
  EXPECT_NE(turn_prompt(*kuhn, *s).find("You are Player 0.\n" + observation + part + "\n\nThink briefly"),
            std::string::npos);
  EXPECT_EQ(seat_turn_message(*kuhn, *s, 0), observation + part);
}

TEST(Protocol, InvalidAnswersLoseWithThePenalty) {
  const auto game = make_game("tic_tac_toe");
  TextAgent bad([](const std::string&) { return std::string("I refuse"); }, "bad");
  TextAgent center([](const std::string&) { return std::string("<think>center</think><answer><X(1,1)></answer>"); },
                   "center");
  RandomAgent random;
  Rng rng(3);
  EpisodeResult r = play_episode(*game, {&random, &bad}, rng);
  EXPECT_EQ(r.invalid_player, 1);
  EXPECT_EQ(r.mars_reward, (std::vector<double>{0, -11}));
  EXPECT_EQ(r.returns, (std::vector<double>{1, -1}));
  r = play_episode(*game, {&center, &random}, rng);  // legal once, then the cell is taken
  EXPECT_EQ(r.invalid_player, 0);
  EXPECT_EQ(r.valid_turns[0], 1);
  EXPECT_NE(bad.last_error().find("<think>"), std::string::npos);
}

}  // namespace
