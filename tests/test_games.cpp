// Games: rules on hand-checked positions, CFR against known game values, MCTS strength, and
// the text protocol.
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "games/arena.hpp"
#include "games/cfr.hpp"
#include "util/error.hpp"

using namespace crossmoe;
using namespace crossmoe::games;

namespace {

std::unique_ptr<State> play(const std::string& game, const std::vector<int>& actions) {
  auto s = make_game(game)->initial_state();
  for (int a : actions) s->apply(a);
  return s;
}

TEST(TicTacToe, LinesWinAndFullBoardsDraw) {
  auto s = play("tic_tac_toe", {0, 3, 1, 4, 2});  // x takes the top row
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns(), (std::vector<double>{1, -1}));
  s = play("tic_tac_toe", {0, 2, 3, 4, 8, 6});  // o takes the anti-diagonal
  EXPECT_EQ(s->returns(), (std::vector<double>{-1, 1}));
  s = play("tic_tac_toe", {0, 1, 2, 4, 3, 5, 7, 6, 8});  // x o x / x o o / o x x
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns(), (std::vector<double>{0, 0}));
  s = play("tic_tac_toe", {4});
  EXPECT_EQ(s->current_player(), 1);
  EXPECT_EQ(s->legal_actions().size(), 8u);
  EXPECT_THROW(s->apply(4), Error);
}

TEST(ConnectFour, PiecesFallAndFourInARowWins) {
  auto s = play("connect_four", {3, 3, 3, 3, 3, 3});
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{0, 1, 2, 4, 5, 6}));  // column 3 is full
  EXPECT_FALSE(s->is_terminal());
  s = play("connect_four", {0, 0, 1, 1, 2, 2, 3});  // x: bottom row 0-3
  EXPECT_EQ(s->returns(), (std::vector<double>{1, -1}));
  s = play("connect_four", {6, 0, 6, 0, 6, 0, 5, 0});  // o: column 0 vertical
  EXPECT_EQ(s->returns(), (std::vector<double>{-1, 1}));
  // x diagonal from (5,0) up-right to (2,3).
  s = play("connect_four", {0, 1, 1, 2, 2, 3, 2, 3, 3, 6, 3});
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns()[0], 1);
}

TEST(KuhnPoker, PayoffsOfEveryBettingSequence) {
  // Player 0 holds K (2), player 1 holds J (0).
  EXPECT_EQ(play("kuhn_poker", {2, 0, 0, 0})->returns(), (std::vector<double>{1, -1}));     // pass pass
  EXPECT_EQ(play("kuhn_poker", {2, 0, 1, 1})->returns(), (std::vector<double>{2, -2}));     // bet call
  EXPECT_EQ(play("kuhn_poker", {2, 0, 1, 0})->returns(), (std::vector<double>{1, -1}));     // bet fold
  EXPECT_EQ(play("kuhn_poker", {2, 0, 0, 1, 0})->returns(), (std::vector<double>{-1, 1}));  // pass bet fold
  EXPECT_EQ(play("kuhn_poker", {0, 2, 0, 1, 1})->returns(), (std::vector<double>{-2, 2}));  // pass bet call
  auto s = play("kuhn_poker", {1, 2});
  EXPECT_EQ(s->information_state(0), "Q:");
  EXPECT_EQ(s->observation(0).find("K"), std::string::npos);  // the opponent's card stays hidden
}

TEST(KuhnPoker, CfrConvergesToTheKnownValue) {
  const auto game = make_game("kuhn_poker");
  CfrSolver solver(*game);
  solver.iterate(1000);
  const Policy policy = solver.average_policy();
  EXPECT_NEAR(expected_returns(*game, policy)[0], -1.0 / 18.0, 1e-4);
  EXPECT_LT(exploitability(*game, policy), 2e-4);
  // A uniform policy is far from equilibrium: the measure can tell.
  EXPECT_GT(exploitability(*game, Policy{}), 0.4);
}

TEST(LeducPoker, RulesAndInformationStates) {
  // Q (2) vs K (4); round 1: raise, call; public Q (3): player 0 pairs; round 2: check, check.
  auto s = play("leduc_poker", {2, 4, 2, 1, 3, 1, 1});
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns(), (std::vector<double>{3, -3}));
  s = play("leduc_poker", {2, 4});
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{1, 2}));  // no fold without a bet to face
  s->apply(2);
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{0, 1, 2}));
  s->apply(2);
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{0, 1}));  // two raises: no third
  s->apply(0);                                               // player 0 folds: loses 1 + 2
  EXPECT_EQ(s->returns(), (std::vector<double>{-3, 3}));
  // OpenSpiel's Leduc has 936 information states (both players).
  std::set<std::string> infos;
  std::function<void(const State&)> walk = [&](const State& st) {
    if (st.is_terminal()) return;
    if (!st.is_chance()) infos.insert(std::to_string(st.current_player()) + st.information_state(st.current_player()));
    for (int a : st.legal_actions()) {
      auto c = st.clone();
      c->apply(a);
      walk(*c);
    }
  };
  walk(*make_game("leduc_poker")->initial_state());
  EXPECT_EQ(infos.size(), 936u);
}

TEST(LeducPoker, CfrExploitabilityFalls) {
  const auto game = make_game("leduc_poker");
  CfrSolver solver(*game);
  solver.iterate(20);
  const double early = exploitability(*game, solver.average_policy());
  solver.iterate(180);
  const Policy policy = solver.average_policy();
  const double late = exploitability(*game, policy);
  EXPECT_LT(late, early / 10);
  EXPECT_LT(late, 0.01);
  EXPECT_NEAR(expected_returns(*game, policy)[0], -0.0856, 0.002);  // the game's value for player 0
}

TEST(Hanabi, DealsPlaysHintsAndScores) {
  // Chance action 0 deals the first card left; the deck starts R1 R1 R1 R2 R2 R3 R3 R4 R4 R5 Y1 ...
  auto s = make_game("hanabi")->initial_state();
  EXPECT_EQ(s->chance_outcomes().size(), 50u);  // 5 colors x (3 + 2 + 2 + 2 + 1)
  for (int i = 0; i < 10; ++i) s->apply(0);       // player 0: R1 R1 R1 R2 R2; player 1: R3 R3 R4 R4 R5
  EXPECT_EQ(s->current_player(), 0);
  // Information tokens are full: no discards. Plays 5..9, reveal color R (10), ranks 3, 4, 5.
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{5, 6, 7, 8, 9, 10, 17, 18, 19}));
  EXPECT_NE(s->observation(0).find("Player 1's hand (you see it): R3 R3 R4 R4 R5"), std::string::npos);
  EXPECT_EQ(s->observation(1).find("R3 R3"), std::string::npos);  // nobody sees their own cards
  s->apply(5);  // player 0 plays R1: firework R1
  EXPECT_TRUE(s->is_chance());
  s->apply(0);  // player 0 draws R1 (the next card)
  s->apply(10 + 5 + 0);  // player 1 reveals rank 1 to player 0
  EXPECT_NE(s->observation(0).find("[0: ?1]"), std::string::npos) << s->observation(0);
  EXPECT_NE(s->observation(0).find("[3: ?? not 1]"), std::string::npos);
  s->apply(5);  // player 0 plays R1 again: wrong, a life lost
  s->apply(0);
  EXPECT_NE(s->observation(1).find("Lives: 2 of 3"), std::string::npos);
  EXPECT_NE(s->observation(1).find("Information tokens: 7 of 8"), std::string::npos);
  s->apply(0);  // player 1 discards R3: a token back
  s->apply(0);
  EXPECT_NE(s->observation(0).find("Information tokens: 8 of 8"), std::string::npos);
  EXPECT_EQ(s->returns(), (std::vector<double>{1, 1}));  // the R firework stands at 1
}

TEST(Hanabi, LosingEveryLifeScoresZeroAndGamesEnd) {
  auto s = make_game("hanabi")->initial_state();
  for (int i = 0; i < 10; ++i) s->apply(0);
  s->apply(5);  // R1: good
  s->apply(0);
  s->apply(5 + 1);  // player 1 plays R3: wrong
  s->apply(0);
  s->apply(5 + 1);  // player 0 plays R1: wrong
  s->apply(0);
  s->apply(5);  // player 1 plays R3: wrong, no lives left
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns(), (std::vector<double>{0, 0}));
  // Whole games end, cooperatively scored; the rule-based pair beats random players.
  const auto game = make_game("hanabi");
  auto partner = make_hanabi_partner();
  RandomAgent random;
  Rng rng(5);
  double rules = 0, randoms = 0;
  for (int g = 0; g < 200; ++g) {
    const EpisodeResult r = play_episode(*game, {partner.get(), partner.get()}, rng);
    EXPECT_EQ(r.returns[0], r.returns[1]);
    rules += r.returns[0];
    randoms += play_episode(*game, {&random, &random}, rng).returns[0];
  }
  EXPECT_GT(rules / 200, 5.0);
  EXPECT_LT(randoms / 200, 1.0);
}

TEST(Hanabi, ParametersAsOpenSpielGameStrings) {
  // Two colors of five ranks: 2 x (3 + 2 + 2 + 2 + 1) cards; hands of 2.
  auto s = make_game("hanabi(colors=2,ranks=5,hand_size=2,max_information_tokens=3,max_life_tokens=1)")->initial_state();
  EXPECT_EQ(s->chance_outcomes().size(), 20u);
  for (int i = 0; i < 4; ++i) s->apply(0);
  EXPECT_NE(s->observation(0).find("Information tokens: 3 of 3. Lives: 1 of 1."), std::string::npos);
  EXPECT_THROW(make_game("hanabi(bogus=1)"), Error);
  EXPECT_THROW(make_game("hanabi(colors=9)"), Error);
  EXPECT_THROW(make_game("kuhn_poker(players=3)"), Error);
  EXPECT_THROW(make_game("hanabi(colors=2"), Error);
}

TEST(Hanabi, SmallPresets) {
  // mini: one colour of 3 + 2 + 2 + 2 + 1 cards; simple: two colours. Parameters still override.
  EXPECT_EQ(make_game("mini_hanabi")->initial_state()->chance_outcomes().size(), 10u);
  EXPECT_EQ(make_game("simple_hanabi")->initial_state()->chance_outcomes().size(), 20u);
  EXPECT_EQ(make_game("simple_hanabi(colors=3)")->initial_state()->chance_outcomes().size(), 30u);
  auto s = make_game("mini_hanabi")->initial_state();
  for (int i = 0; i < 4; ++i) s->apply(0);
  EXPECT_NE(s->observation(0).find("Information tokens: 3 of 3. Lives: 1 of 1."), std::string::npos);
  EXPECT_TRUE(make_game("mini_hanabi")->info().cooperative);
}

TEST(Mcts, NeverLosesTicTacToeToRandom) {
  const auto game = make_game("tic_tac_toe");
  MctsAgent mcts(1000);
  RandomAgent random;
  const MatchStats first = play_match(*game, mcts, random, 500, 1);
  const MatchStats second = play_match(*game, random, mcts, 500, 2);
  EXPECT_EQ(first.losses, 0);
  EXPECT_EQ(second.wins, 0);  // random as player 0 never wins
  EXPECT_GT(first.wins, 450);
}

TEST(Protocol, ParsesAnswersAndRejectsEverythingElse) {
  auto s = play("kuhn_poker", {1, 2});
  const auto action = [&](const std::string& text) { return parse_answer(text, *s).action; };
  EXPECT_EQ(action("<think>Q is middling.</think><answer>Bet</answer>"), 1);
  EXPECT_EQ(action("<answer>  pass \n</answer>"), 0);
  EXPECT_EQ(action("<think>a</think><answer>Raise</answer>"), -1);          // not a legal action
  EXPECT_EQ(action("Bet"), -1);                                             // no tags
  EXPECT_EQ(action("<answer>Bet"), -1);                                     // unclosed
  EXPECT_EQ(action("<answer></answer>"), -1);                               // empty
  EXPECT_EQ(action("<think>never closed <answer>Bet</answer>"), -1);
  EXPECT_EQ(action("{\"action\": \"Bet\"}"), -1);                         // another format
  EXPECT_EQ(action(std::string(kMaxAnswerBytes, 'x') + "<answer>Bet</answer>"), -1);  // huge
  EXPECT_EQ(action("<answer>Pass</answer> no wait <answer>Bet</answer>"), 1);  // the last answer counts
  const std::string prompt = turn_prompt(make_game("kuhn_poker")->info(), *s);
  EXPECT_NE(prompt.find("Your card: Q"), std::string::npos);
  EXPECT_NE(prompt.find("Legal actions: Pass Bet"), std::string::npos);
}

TEST(Protocol, InvalidAnswersLoseWithThePenalty) {
  const auto game = make_game("tic_tac_toe");
  TextAgent bad([](const std::string&) { return std::string("I refuse"); }, "bad");
  TextAgent good([](const std::string&) { return std::string("<answer>4</answer>"); }, "good");
  RandomAgent random;
  Rng rng(3);
  EpisodeResult r = play_episode(*game, {&random, &bad}, rng);
  EXPECT_EQ(r.invalid_player, 1);
  EXPECT_EQ(r.shaped[1], -11.0);
  EXPECT_DOUBLE_EQ(r.shaped[0], 1.0 + 0.05);  // the opponent wins, plus its one valid turn
  r = play_episode(*game, {&good, &random}, rng);  // "4" is legal once, then taken
  EXPECT_EQ(r.invalid_player, 0);
  EXPECT_EQ(r.valid_turns[0], 1);
}

}  // namespace
