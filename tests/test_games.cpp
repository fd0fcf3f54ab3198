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
  EXPECT_EQ(s->forfeit_stake(0), 3);                         // the ante and a raise of 2
  EXPECT_EQ(s->forfeit_stake(1), 5);                         // the ante, a call and a raise
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

TEST(LeducPoker, ShippedNashPolicy) {
  // data/games/leduc_poker_nash.json (4000 CFR+ iterations): an equilibrium to 1e-4 chips, with
  // the game's value. MARS's own Leduc opponent (ne.pkl.gz) has exploitability 8e-4 by the same
  // best response (docs/games.md).
  const auto game = make_game("leduc_poker");
  const Policy nash = nash_policy(*game);
  EXPECT_EQ(nash.size(), 936u);
  EXPECT_LT(exploitability(*game, nash), 1e-4);
  EXPECT_NEAR(expected_returns(*game, nash)[0], -0.0856, 5e-4);
  EXPECT_THROW(nash_policy(*make_game("kuhn_poker")), Error);
}

TEST(Policies, FilesAreCheckedBeforeUse) {
  const auto kuhn = make_game("kuhn_poker");
  const auto error_of = [&](const std::string& text) {
    try {
      parse_policy(text, *kuhn, "p.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string head = R"({"game": "kuhn_poker", "policy": )";
  EXPECT_NE(error_of(head + R"({"K:": []}})").find("non-empty list"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:": [[0, -0.5], [1, 1.5]]}})").find(">= 0"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:": [[0, 0], [1, 0]]}})").find("sum to 0"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:": [[0, 0.5], [1, 0.6]]}})").find("sum to 1.1"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:": [[0, 1]]}})").find("exactly the legal actions"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:x": [[0, 1], [1, 0]]}})").find("not one of"), std::string::npos);
  EXPECT_NE(error_of(head + R"({"K:": [[0, "a"], [1, 0]]}})").find("[action, probability]"), std::string::npos);
  EXPECT_NE(error_of(R"({"game": "leduc_poker", "policy": {}})").find("not kuhn_poker"), std::string::npos);
  EXPECT_NE(error_of("{nope").find("not valid JSON"), std::string::npos);
  EXPECT_EQ(error_of(head + R"({"K:": [[0, 0.25], [1, 0.75]]}})"), "no error");
  // CFR cannot solve the board games or Hanabi: refused before any work.
  for (const char* name : {"connect_four", "tic_tac_toe", "mini_hanabi"})
    EXPECT_THROW(require_cfr_solvable(*make_game(name)), Error) << name;
  EXPECT_NO_THROW(require_cfr_solvable(*kuhn));
  // A solved policy survives the file round trip.
  CfrSolver solver(*kuhn);
  solver.iterate(50);
  const std::string path = ::testing::TempDir() + "kuhn_policy.json";
  write_policy_file(path, *kuhn, solver.average_policy());
  const Policy back = read_policy_file(path, *kuhn);
  ASSERT_EQ(back.size(), solver.average_policy().size());
  for (const auto& [key, moves] : solver.average_policy())
    for (size_t i = 0; i < moves.size(); ++i) EXPECT_NEAR(back.at(key)[i].second, moves[i].second, 1e-12);
  EXPECT_THROW(read_policy_file(path + ".missing", *kuhn), Error);
}

// Deals, by card (chance outcome color * ranks + rank, as OpenSpiel numbers them): player 0
// gets R1 R1 R1 R2 R2, player 1 R3 R3 R4 R4 R5.
std::unique_ptr<State> dealt_hanabi() {
  auto s = make_game("hanabi")->initial_state();
  for (int card : {0, 0, 0, 1, 1, 2, 2, 3, 3, 4}) s->apply(card);
  return s;
}

TEST(Hanabi, DealsPlaysHintsAndScores) {
  auto s = make_game("hanabi")->initial_state();
  // 25 kinds of card; R1 is 3 of the 50 cards.
  ASSERT_EQ(s->chance_outcomes().size(), 25u);
  EXPECT_DOUBLE_EQ(s->chance_outcomes()[0].second, 3.0 / 50);
  s = dealt_hanabi();
  EXPECT_EQ(s->current_player(), 0);
  EXPECT_TRUE(s->chance_outcomes().empty());
  // Information tokens are full: no discards. Plays 5..9, reveal color R (10), ranks 3, 4, 5.
  EXPECT_EQ(s->legal_actions(), (std::vector<int>{5, 6, 7, 8, 9, 10, 17, 18, 19}));
  EXPECT_EQ(s->action_to_string(17), "(Reveal player +1 rank 3)");
  EXPECT_NE(s->observation(0).find("Player 1's hand (you see it): R3 R3 R4 R4 R5"), std::string::npos);
  EXPECT_EQ(s->observation(1).find("R3 R3"), std::string::npos);  // nobody sees their own cards
  s->apply(5);  // player 0 plays R1: firework R1
  EXPECT_EQ(s->rewards(), (std::vector<double>{1, 1}));
  EXPECT_TRUE(s->is_chance());
  s->apply(5);  // player 0 draws Y1
  s->apply(10 + 5 + 0);  // player 1 reveals rank 1 to player 0: R1 R1 R2 R2 Y1
  EXPECT_NE(s->observation(0).find("[0: ?1]"), std::string::npos) << s->observation(0);
  EXPECT_NE(s->observation(0).find("[3: ?? not 1]"), std::string::npos);
  s->apply(5);  // player 0 plays R1 again: wrong, a life lost
  EXPECT_EQ(s->rewards(), (std::vector<double>{0, 0}));
  s->apply(5);
  EXPECT_NE(s->observation(1).find("Lives: 2 of 3"), std::string::npos);
  EXPECT_NE(s->observation(1).find("Information tokens: 7 of 8"), std::string::npos);
  s->apply(0);  // player 1 discards R3: a token back
  s->apply(5);
  EXPECT_NE(s->observation(0).find("Information tokens: 8 of 8"), std::string::npos);
  EXPECT_EQ(s->returns(), (std::vector<double>{1, 1}));  // the R firework stands at 1
  EXPECT_EQ(s->forfeit_stake(0), 1);
}

TEST(Hanabi, LosingEveryLifeScoresZeroAndGamesEnd) {
  auto s = dealt_hanabi();
  s->apply(5);  // R1: good
  s->apply(5);
  s->apply(5 + 1);  // player 1 plays R3: wrong
  s->apply(5);
  s->apply(5 + 1);  // player 0 plays R1: wrong
  s->apply(5);
  s->apply(5);  // player 1 plays R3: wrong, no lives left
  EXPECT_TRUE(s->is_terminal());
  EXPECT_EQ(s->returns(), (std::vector<double>{0, 0}));
  EXPECT_EQ(s->rewards(), (std::vector<double>{-1, -1}));  // the point earned is lost
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
  // Two colors of five ranks; hands of 2.
  const auto game = make_game("hanabi(colors=2,ranks=5,hand_size=2,max_information_tokens=3,max_life_tokens=1)");
  auto s = game->initial_state();
  EXPECT_EQ(s->chance_outcomes().size(), 10u);
  EXPECT_EQ(game->info().num_distinct_actions, 2 * 2 + 2 + 5);
  for (int i = 0; i < 4; ++i) s->apply(s->legal_actions().front());
  EXPECT_NE(s->observation(0).find("Information tokens: 3 of 3. Lives: 1 of 1."), std::string::npos);
  EXPECT_EQ(make_game("hanabi(players=4)")->info().parameters.at("hand_size"), 4);  // HLE's default for 4-5
  EXPECT_THROW(make_game("hanabi(bogus=1)"), Error);
  EXPECT_THROW(make_game("hanabi(colors=9)"), Error);
  EXPECT_THROW(make_game("hanabi(hand_size=100000)"), Error);
  EXPECT_THROW(make_game("kuhn_poker(players=3)"), Error);
  EXPECT_NO_THROW(make_game("kuhn_poker(players=2)"));
  EXPECT_THROW(make_game("hanabi(colors=2"), Error);
}

TEST(Hanabi, MarsPresets) {
  // MARS's Mini (training), Simple (held out) and Full Hanabi: 2 players;
  // colors, ranks, hand_size, max_information_tokens, max_life_tokens = 2 2 3 3 3, 3 2 5 8 3, 3 3 5 8 3.
  const std::vector<std::pair<std::string, std::vector<int>>> presets = {
      {"mini_hanabi", {2, 2, 3, 3, 3}}, {"simple_hanabi", {3, 2, 5, 8, 3}}, {"full_hanabi", {3, 3, 5, 8, 3}}};
  for (const auto& [name, v] : presets) {
    const auto game = make_game(name);
    const GameParameters expected = {{"players", 2},           {"colors", v[0]},
                                     {"ranks", v[1]},          {"hand_size", v[2]},
                                     {"max_information_tokens", v[3]}, {"max_life_tokens", v[4]}};
    EXPECT_EQ(game->info().parameters, expected) << name;
    EXPECT_EQ(game->info().name, name);
    EXPECT_EQ(game->info().family, "hanabi");
    EXPECT_TRUE(game->info().cooperative);
    // A color has 3 ones, 2 of each middle rank and 1 of the top rank.
    const int per_color = v[1] == 2 ? 4 : 6;
    double cards = 0;
    auto s = game->initial_state();
    for (const auto& [card, p] : s->chance_outcomes()) cards += p * per_color * v[0];
    EXPECT_NEAR(cards, v[0] * per_color * 1.0, 1e-9);
    for (int i = 0; i < 2 * v[2]; ++i) s->apply(s->legal_actions().front());
    EXPECT_EQ(s->current_player(), 0);
    EXPECT_NE(s->observation(0).find("Information tokens: " + std::to_string(v[3]) + " of " + std::to_string(v[3]) +
                                     ". Lives: " + std::to_string(v[4]) + " of " + std::to_string(v[4])),
              std::string::npos);
  }
  // Parameters still override a preset.
  EXPECT_EQ(make_game("mini_hanabi(colors=3)")->info().parameters.at("colors"), 3);
  EXPECT_EQ(make_game("mini_hanabi(colors=3)")->info().max_chance_outcomes, 6);
}

TEST(Mcts, BeatsRandomAtTicTacToe) {
  // MARS's opponent: uct_c 2, 100 simulations, 10 random rollouts per leaf. Moving first it never
  // loses; moving second it lost 10 of 300 in one run (100 simulations miss some forks).
  const auto game = make_game("tic_tac_toe");
  MctsAgent mcts;
  RandomAgent random;
  const MatchStats first = play_match(*game, mcts, random, 200, 1);
  EXPECT_EQ(first.losses, 0);
  EXPECT_GT(first.wins, 180);
  const MatchStats second = play_match(*game, random, mcts, 200, 2);
  EXPECT_LT(second.wins, 14);  // random as player 0 wins rarely
  EXPECT_GT(second.losses, 160);
  // With 1000 simulations (MARS's stronger setting) it loses neither way.
  MctsAgent strong({2.0, 1000, 10});
  EXPECT_EQ(play_match(*game, strong, random, 20, 3).losses, 0);
  EXPECT_EQ(play_match(*game, random, strong, 20, 4).wins, 0);
}

TEST(Mcts, TakesWinsBlocksLossesAndChecksItsOptions) {
  const auto game = make_game("tic_tac_toe");
  Rng rng(7);
  MctsAgent mcts;
  // x: 0, 1; o: 3, 4; x to move wins at 2.
  EXPECT_EQ(mcts.act(*game, *play("tic_tac_toe", {0, 3, 1, 4}), rng), 2);
  // x: 0, 8; o: 4, 3; x must block o's row at 5.
  EXPECT_EQ(mcts.act(*game, *play("tic_tac_toe", {0, 4, 8, 3}), rng), 5);
  // Connect Four: x has three in the bottom row, o must block at column 3.
  const auto c4 = make_game("connect_four");
  EXPECT_EQ(mcts.act(*c4, *play("connect_four", {0, 0, 1, 1, 2}), rng), 3);
  EXPECT_THROW(MctsAgent({2.0, 0, 10}), Error);
  EXPECT_THROW(MctsAgent({2.0, -5, 10}), Error);
  EXPECT_THROW(MctsAgent({2.0, 100, 0}), Error);
  EXPECT_THROW(MctsAgent({-1.0, 100, 10}), Error);
  // 1000 simulations (MARS's stronger setting) still answer.
  MctsAgent strong({2.0, 1000, 10});
  EXPECT_EQ(strong.act(*game, *play("tic_tac_toe", {0, 4, 8, 3}), rng), 5);
}

}  // namespace
