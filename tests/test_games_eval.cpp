// `crossmoe games eval`: the evaluation (games/model_eval) against an independent count, and the
// command on a tiny random model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "cli_run.hpp"
#include "games/arena.hpp"
#include "games/cfr.hpp"
#include "games/model_eval.hpp"
#include "model/hf_config.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace fs = std::filesystem;
using namespace crossmoe;
using namespace crossmoe::games;
using crossmoe::testing_cli::run;

namespace {

// A tiny random model with a byte-level tokenizer and ChatML, made by the CLI as a user would.
class GamesEval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("crossmoe_games_eval_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    ASSERT_EQ(run("init " + model().string() + " --layout moe --layers 2 --hidden 32 --heads 2 --kv-heads 1").code, 0);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path model() { return dir_ / "model"; }
  static fs::path dir_;
};
fs::path GamesEval::dir_;

// A "model" that always answers the first legal action its last message lists, in MARS's answer
// format, then the end-of-turn token: a scripted player whose every answer is valid.
class FirstLegalGenerator : public TokenGenerator {
 public:
  FirstLegalGenerator(ChatModel& chat, int rows) : chat_(chat), rows_(size_t(rows)) {}
  void reset() override {
    for (auto& r : rows_) r.clear();
  }
  int sequences() const override { return int(rows_.size()); }
  const std::vector<int>& tokens(int row) const override { return rows_.at(size_t(row)); }
  int free_space(int row) const override { return 100000 - int(rows_.at(size_t(row)).size()); }
  std::vector<Generation> generate(const std::vector<GenerationRequest>& requests, const std::vector<int>& stop,
                                   const SamplingOptions&, std::mt19937_64&) override {
    std::vector<Generation> out;
    for (const auto& r : requests) {
      std::vector<int>& row = rows_.at(size_t(r.sequence));
      row.insert(row.end(), r.append.begin(), r.append.end());
      const std::string text = chat_.tokenizer.decode(r.append);
      const size_t list = text.rfind("Legal actions: ");
      EXPECT_NE(list, std::string::npos) << text;
      const size_t begin = text.find('<', list), end = text.find('>', begin);
      const std::string answer = "<think>first legal move</think><answer>" + text.substr(begin, end + 1 - begin) + "</answer>";
      Generation g;
      g.tokens = chat_.tokenizer.encode(answer);
      g.tokens.push_back(stop.at(0));
      g.stopped = true;
      row.insert(row.end(), g.tokens.begin(), g.tokens.end());
      ++answers;
      out.push_back(std::move(g));
    }
    return out;
  }
  int answers = 0;

 private:
  ChatModel& chat_;
  std::vector<std::vector<int>> rows_;
};

class FirstLegalAgent : public Agent {
 public:
  int act(const Game&, const State& state, Rng&) override { return state.legal_actions().front(); }
  std::string name() const override { return "first-legal"; }
};

}  // namespace

// Every matchup's tally equals the arena's (games/arena, which the CLI's `games play` uses) for the
// same player and opponent on the same seed: the seats, the opponents, the counts and the payoffs.
TEST_F(GamesEval, ScriptedModelMatchesArena) {
  ChatModel chat = load_chat_model(model(), read_model_config(model()).eos_token_ids);
  EvalSettings s;
  s.games_per_matchup = 12;
  s.mcts_rollouts = 2;
  s.cfr_iterations = 50;
  s.seed = 7;
  s.batch = 1;  // one rng stream, game after game, as play_match draws it
  const std::vector<Matchup> matchups = mars_matchups({"tic_tac_toe", "kuhn_poker", "leduc_poker", "mini_hanabi"}, {8});
  ASSERT_EQ(matchups.size(), 7u);
  FirstLegalGenerator generator(chat, 2);
  for (const Matchup& up : matchups) {
    SCOPED_TRACE(up.game + " " + up.opponent + " seat " + std::to_string(up.model_seat));
    const std::vector<MatchupResult> result = evaluate_model({up}, generator, chat, s);
    ASSERT_EQ(result.size(), 1u);
    const MatchupResult& r = result[0];
    const auto game = make_game(up.game);
    FirstLegalAgent first, partner;
    std::unique_ptr<Agent> opponent;
    if (up.opponent == "mcts-8") opponent = std::make_unique<MctsAgent>(MctsOptions{2.0, 8, 2});
    if (up.opponent == "nash") opponent = std::make_unique<PolicyAgent>(nash_policy(*game), "nash");
    if (up.opponent == "cfr") {
      CfrSolver solver(*game, CfrSolver::Variant::Cfr);
      solver.iterate(50);
      opponent = std::make_unique<PolicyAgent>(solver.average_policy(), "cfr");
    }
    Agent* p0 = up.model_seat == 1 ? opponent.get() : &first;
    Agent* p1 = up.model_seat == 0 ? opponent.get() : up.model_seat == 1 ? &first : &partner;
    const MatchStats m = play_match(*game, *p0, *p1, s.games_per_matchup, s.seed);
    EXPECT_EQ(r.games, 12);
    EXPECT_EQ(r.forfeits, 0);
    EXPECT_GT(r.answers, 0);
    if (up.model_seat < 0) {
      EXPECT_TRUE(r.cooperative);
      EXPECT_DOUBLE_EQ(r.mean_payoff, m.mean_return);
      EXPECT_NEAR(r.payoff_sd, m.return_sd(), 1e-12);
      continue;
    }
    EXPECT_EQ(r.wins + r.draws + r.losses, r.games);
    EXPECT_EQ(r.wins, up.model_seat == 0 ? m.wins : m.losses);
    EXPECT_EQ(r.losses, up.model_seat == 0 ? m.losses : m.wins);
    EXPECT_EQ(r.draws, m.draws);
    EXPECT_NEAR(r.mean_payoff, up.model_seat == 0 ? m.mean_return : -m.mean_return, 1e-12);
  }
}

TEST_F(GamesEval, MarsMatchups) {
  const auto all = mars_matchups(mars_eval_games(), {100, 1000});
  ASSERT_EQ(all.size(), 15u);  // MARS's eval config has these 15 rows
  int mcts = 0, self_play = 0;
  for (const auto& m : all) {
    mcts += m.opponent.rfind("mcts-", 0) == 0;
    self_play += m.opponent == "self-play";
    if (m.game == "kuhn_poker") EXPECT_EQ(m.opponent, "cfr");
    if (m.game == "leduc_poker") EXPECT_EQ(m.opponent, "nash");
  }
  EXPECT_EQ(mcts, 8);
  EXPECT_EQ(self_play, 3);
  EXPECT_THROW(mars_matchups({"chess"}, {100}), Error);
  EXPECT_THROW(mars_matchups({"kuhn_poker", "kuhn_poker"}, {100}), Error);
}

// The command on a random model: its answers never parse, so it forfeits every game at its first
// answer (a loss, as MARS scores it; Hanabi scores 0); every row is there and adds up.
TEST_F(GamesEval, RandomModelForfeitsEveryGame) {
  const fs::path md = dir_ / "table.md", js = dir_ / "table.json";
  const auto r = run("games eval " + model().string() + " -n 3 --mcts-simulations 5 --mcts-rollouts 2 --max-new-tokens 4 "
                     "--cfr-iterations 20 --json -o " + md.string(), false);
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const auto& rows = j.at("results");
  ASSERT_EQ(rows.size(), 11u);  // 2 + 2 + 1 + 2 + 2 + 1 + 1
  std::set<std::string> games;
  for (const auto& row : rows) {
    SCOPED_TRACE(row.dump());
    games.insert(row.at("game").get<std::string>());
    EXPECT_EQ(row.at("games").get<int>(), 3);
    EXPECT_EQ(row.at("forfeits").get<int>(), 3);
    if (row.at("opponent") == "self-play") {
      EXPECT_EQ(row.at("mean_score").get<double>(), 0.0);
      continue;
    }
    EXPECT_EQ(row.at("wins").get<int>() + row.at("draws").get<int>() + row.at("losses").get<int>(), 3);
    EXPECT_EQ(row.at("losses").get<int>(), 3);
    for (const char* k : {"win", "draw", "loss"}) {
      const double rate = row.at(std::string(k) + "_rate").get<double>();
      const auto interval = row.at(std::string(k) + "_interval");
      EXPECT_LE(interval[0].get<double>(), rate);
      EXPECT_GE(interval[1].get<double>(), rate);
      EXPECT_LT(interval[0].get<double>(), interval[1].get<double>());
    }
    EXPECT_LT(row.at("mean_payoff").get<double>(), 0.0);  // the forfeited stake
  }
  EXPECT_EQ(games.size(), 7u);
  std::ifstream in(md);
  int lines = 0;
  for (std::string line; std::getline(in, line);) lines += line.rfind("| ", 0) == 0 || line.rfind("|-", 0) == 0;
  EXPECT_EQ(lines, 2 + 11);

  // The table on stdout, and -o FILE.json holds what --json prints.
  const auto t = run("games eval " + model().string() + " --games tic_tac_toe,mini_hanabi -n 2 --mcts-simulations 4 "
                     "--max-new-tokens 4 -o " + js.string(), false);
  ASSERT_EQ(t.code, 0) << t.out;
  std::vector<std::string> table_rows;
  std::stringstream lines_of(t.out);
  for (std::string line; std::getline(lines_of, line);)
    if (line.rfind("tic_tac_toe ", 0) == 0 || line.rfind("mini_hanabi ", 0) == 0) table_rows.push_back(line);
  ASSERT_EQ(table_rows.size(), 3u) << t.out;
  EXPECT_NE(table_rows[0].find(" mcts-4 "), std::string::npos) << t.out;
  EXPECT_NE(table_rows[0].find(" first "), std::string::npos) << t.out;
  EXPECT_NE(table_rows[1].find(" second "), std::string::npos) << t.out;
  EXPECT_NE(table_rows[2].find(" self-play "), std::string::npos) << t.out;
  EXPECT_NE(table_rows[2].find("score 0.000"), std::string::npos) << t.out;
  EXPECT_EQ(read_json_file(js).at("results").size(), 3u);
}

TEST_F(GamesEval, BadInputIsAOneLineError) {
  const std::string m = model().string();
  const auto expect_error = [](const testing_cli::Result& r, int code, const std::string& fragment) {
    EXPECT_EQ(r.code, code) << r.out;
    EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(fragment), std::string::npos) << r.out;
  };
  expect_error(run("games eval " + m + " --games chess"), 2, "chess");
  expect_error(run("games eval " + m + " -n 0"), 2, "--games-per-row");
  expect_error(run("games eval " + m + " --mcts-simulations 1"), 2, "--mcts-simulations");
  expect_error(run("games eval " + m + " --backend runtime --device cuda"), 2, "--device");
  expect_error(run("games eval " + (dir_ / "none").string()), 1, "no model directory");
  expect_error(run("games eval " + m + " -o " + (dir_ / "no" / "such" / "dir.md").string()), 1, "cannot write");
  expect_error(run("games eval " + m + " --max-sequence 1000"), 1, "1003 at least");
  // No chat template, no tokenizer.
  const fs::path plain = dir_ / "plain";
  fs::remove_all(plain);
  fs::copy(model(), plain);
  nlohmann::json config = read_json_file(plain / "tokenizer_config.json");
  config.erase("chat_template");
  write_json_file(plain / "tokenizer_config.json", config);
  expect_error(run("games eval " + plain.string() + " -n 1"), 1, "no chat template");
  fs::remove(plain / "tokenizer.json");
  expect_error(run("games eval " + plain.string() + " -n 1"), 1, "no tokenizer.json");
}

#ifdef CROSSMOE_TRAINER_BUILT
// The rollout engine (libtorch, here on the CPU) and the CPU runtime play the same games, greedy.
TEST_F(GamesEval, RolloutEngineEqualsRuntime) {
  const std::string args = "games eval " + model().string() + " --games tic_tac_toe,kuhn_poker,mini_hanabi -n 3 "
                           "--mcts-simulations 4 --max-new-tokens 6 --temperature 0 --batch 1 --json --backend ";
  const auto runtime = run(args + "runtime", false), rollout = run(args + "rollout", false);
  ASSERT_EQ(runtime.code, 0) << runtime.out;
  ASSERT_EQ(rollout.code, 0) << rollout.out;
  nlohmann::json a = nlohmann::json::parse(runtime.out), b = nlohmann::json::parse(rollout.out);
  EXPECT_EQ(a.at("results"), b.at("results"));
}
#endif
