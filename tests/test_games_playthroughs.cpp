// The games replay OpenSpiel's recorded playthroughs (open_spiel/integration_tests/playthroughs,
// commit 112b7770): at every recorded state the same player to move, legal actions and their
// names, chance probabilities, rewards, returns and board, the same terminal step and returns.
// The facts are committed in tests/fixtures/openspiel_playthroughs.json (made from the files by
// tests/fixtures/make_openspiel_playthroughs.py); with CROSSMOE_OPENSPIEL_DIR pointing at an
// unpacked OpenSpiel, the files themselves are read too and must say the same. Beyond those
// single games, tests/fixtures/openspiel_random_games.json holds random games that OpenSpiel
// itself played (tests/fixtures/make_openspiel_random_games.cpp), with a digest of every state.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "games/game.hpp"

using namespace crossmoe::games;
using nlohmann::json;

namespace {

const char* const kFiles[] = {"tic_tac_toe.txt",
                              "connect_four.txt",
                              "kuhn_poker_2p.txt",
                              "leduc_poker_1540482260.txt",
                              "leduc_poker_3977671846.txt",
                              "leduc_poker_773740114.txt",
                              "hanabi.txt",
                              "tiny_hanabi.txt"};

json golden() {
  std::ifstream in(std::string(CROSSMOE_FIXTURES) + "/openspiel_playthroughs.json");
  return json::parse(in);
}

// A value as a playthrough prints it: a number, a list, or a list of (action, probability).
json playthrough_value(const std::string& text) {
  if (text.rfind("[(", 0) == 0) {
    json out = json::array();
    static const std::regex pair(R"(\((-?\d+),\s*([-0-9.e]+)\))");
    for (std::sregex_iterator it(text.begin(), text.end(), pair), end; it != end; ++it)
      out.push_back({std::stoi((*it)[1]), std::stod((*it)[2])});
    return out;
  }
  if (text == "True" || text == "False") return text == "True";
  return json::parse(text);
}

// The same facts as make_openspiel_playthroughs.py extracts, read from a playthrough file.
json parse_playthrough(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  const std::string game = lines.at(0).substr(6);
  const bool board_game = game == "tic_tac_toe" || game == "connect_four";
  json out = {{"game", game}, {"header", json::object()}, {"actions", json::array()}, {"states", json::array()}};
  static const std::regex fact(R"((\w+)\(\) = (.*))");
  const std::map<std::string, std::string> keys = {{"IsTerminal", "terminal"},
                                                   {"CurrentPlayer", "current_player"},
                                                   {"LegalActions", "legal_actions"},
                                                   {"StringLegalActions", "string_legal_actions"},
                                                   {"ChanceOutcomes", "chance_outcomes"},
                                                   {"Rewards", "rewards"},
                                                   {"Returns", "returns"}};
  json* state = nullptr;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    std::smatch m;
    const bool is_fact = std::regex_match(line, m, fact);
    if (!state && is_fact)
      for (const char* h : {"NumDistinctActions", "MaxChanceOutcomes", "NumPlayers", "MinUtility", "MaxUtility"})
        if (m[1] == h) out["header"][h] = std::stod(m[2]);
    if (line.rfind("# State ", 0) == 0) {
      out["states"].push_back(json::object());
      state = &out["states"].back();
      std::string board;
      while (i + 1 < lines.size() && lines[i + 1].rfind("# ", 0) == 0 && lines[i + 1].rfind("# Apply", 0) != 0)
        board += (board.empty() ? "" : "\n") + lines[++i].substr(2);
      if (!board.empty() && board_game) (*state)["board"] = board;
      continue;
    }
    if (state && is_fact && keys.count(m[1])) (*state)[keys.at(m[1])] = playthrough_value(m[2]);
    if (line.rfind("action: ", 0) == 0) out["actions"].push_back(std::stoi(line.substr(8)));
  }
  return out;
}

std::string trim_newlines(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Replays one recorded game, checking every recorded fact of every state on the way.
void replay(const std::string& name, const json& record) {
  SCOPED_TRACE(name);
  const auto game = make_game(record["game"].get<std::string>());
  const GameInfo& info = game->info();
  const json& h = record["header"];
  EXPECT_EQ(info.num_distinct_actions, h["NumDistinctActions"].get<double>());
  EXPECT_EQ(info.max_chance_outcomes, h["MaxChanceOutcomes"].get<double>());
  EXPECT_EQ(info.num_players, h["NumPlayers"].get<double>());
  EXPECT_EQ(info.min_utility, h["MinUtility"].get<double>());
  EXPECT_EQ(info.max_utility, h["MaxUtility"].get<double>());
  const json& states = record["states"];
  const json& actions = record["actions"];
  ASSERT_EQ(states.size(), actions.size() + 1);
  auto s = game->initial_state();
  for (size_t i = 0; i < states.size(); ++i) {
    SCOPED_TRACE("state " + std::to_string(i));
    const json& want = states[i];
    if (want.contains("terminal")) EXPECT_EQ(s->is_terminal(), want["terminal"].get<bool>());
    if (want.contains("current_player")) EXPECT_EQ(s->current_player(), want["current_player"].get<int>());
    if (want.contains("legal_actions")) EXPECT_EQ(s->legal_actions(), want["legal_actions"].get<std::vector<int>>());
    if (want.contains("string_legal_actions")) {
      std::vector<std::string> names;
      for (int a : s->legal_actions()) names.push_back(s->action_to_string(a));
      EXPECT_EQ(names, want["string_legal_actions"].get<std::vector<std::string>>());
    }
    if (want.contains("chance_outcomes")) {
      const auto outcomes = s->chance_outcomes();
      ASSERT_EQ(outcomes.size(), want["chance_outcomes"].size());
      for (size_t k = 0; k < outcomes.size(); ++k) {
        EXPECT_EQ(outcomes[k].first, want["chance_outcomes"][k][0].get<int>());
        EXPECT_NEAR(outcomes[k].second, want["chance_outcomes"][k][1].get<double>(), 1e-6);  // printed to 6 digits
      }
    }
    if (want.contains("rewards")) EXPECT_EQ(s->rewards(), want["rewards"].get<std::vector<double>>());
    if (want.contains("returns")) EXPECT_EQ(s->returns(), want["returns"].get<std::vector<double>>());
    if (want.contains("board")) EXPECT_EQ(trim_newlines(s->to_string()), want["board"].get<std::string>());
    if (i < actions.size()) s->apply(actions[i].get<int>());
  }
  EXPECT_TRUE(s->is_terminal());  // every recorded game ends at its last recorded state
}

TEST(OpenSpielPlaythroughs, ReplayTheCommittedRecords) {
  const json records = golden();
  ASSERT_EQ(records.size(), std::size(kFiles));
  for (const char* file : kFiles) replay(file, records.at(file));
}

// FNV-1a, and the text it digests, as make_openspiel_random_games.cpp writes them.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string describe(const State& s) {
  char buf[64];
  std::string out = "p" + std::to_string(s.current_player()) + (s.is_terminal() ? "T" : "") + "|";
  for (int a : s.legal_actions()) out += std::to_string(a) + "=" + s.action_to_string(a) + ";";
  out += "|";
  for (const auto& [a, p] : s.chance_outcomes()) {
    std::snprintf(buf, sizeof buf, "%d:%.9f;", a, p);
    out += buf;
  }
  out += "|";
  if (!s.is_chance()) {
    for (double r : s.rewards()) std::snprintf(buf, sizeof buf, "%.3f;", r), out += buf;
    out += "|";
  }
  for (double r : s.returns()) std::snprintf(buf, sizeof buf, "%.3f;", r), out += buf;
  return out;
}

TEST(OpenSpielPlaythroughs, RandomGamesOpenSpielPlayed) {
  std::ifstream in(std::string(CROSSMOE_FIXTURES) + "/openspiel_random_games.json");
  const json records = json::parse(in);
  int games = 0, states = 0;
  for (const auto& [game_string, played] : records.items()) {
    const auto game = make_game(game_string);
    for (const json& record : played) {
      SCOPED_TRACE(game_string + " game " + std::to_string(games));
      auto s = game->initial_state();
      const auto& actions = record["actions"];
      const auto& digests = record["digests"];
      ASSERT_EQ(digests.size(), actions.size() + 1);
      for (size_t i = 0; i < digests.size(); ++i) {
        char hex[16];
        std::snprintf(hex, sizeof hex, "%08llx", static_cast<unsigned long long>(fnv1a(describe(*s)) >> 32));
        ASSERT_EQ(hex, digests[i].get<std::string>()) << "state " << i << ": " << describe(*s);
        ++states;
        if (i < actions.size()) s->apply(actions[i].get<int>());
      }
      EXPECT_TRUE(s->is_terminal());
      ++games;
    }
  }
  EXPECT_EQ(games, 215);
  EXPECT_EQ(states, 2954);
}

TEST(OpenSpielPlaythroughs, ReplayTheFilesThemselves) {
  const char* dir = std::getenv("CROSSMOE_OPENSPIEL_DIR");
  if (!dir) GTEST_SKIP() << "set CROSSMOE_OPENSPIEL_DIR to an unpacked OpenSpiel (commit 112b7770) to replay its "
                            "playthrough files; the committed records are replayed regardless";
  const std::filesystem::path root = std::filesystem::path(dir) / "open_spiel" / "integration_tests" / "playthroughs";
  ASSERT_TRUE(std::filesystem::is_directory(root)) << root << " is not an OpenSpiel playthrough directory";
  const json records = golden();
  for (const char* file : kFiles) {
    const json parsed = parse_playthrough((root / file).string());
    replay(file, parsed);
    // The committed records are these files' facts (so the CI replay checks the same things).
    EXPECT_EQ(parsed.dump(), records.at(file).dump()) << file << ": rerun tests/fixtures/make_openspiel_playthroughs.py";
  }
}

}  // namespace
