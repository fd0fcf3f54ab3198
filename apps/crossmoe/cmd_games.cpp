// crossmoe games play | solve: matches between opponents, models and humans; CFR solutions.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "games/arena.hpp"
#include "games/cfr.hpp"
#include "runtime/generate.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

using namespace crossmoe::games;

nlohmann::json policy_to_json(const std::string& game, const Policy& policy) {
  nlohmann::json p = nlohmann::json::object();
  for (const auto& [key, moves] : policy) p[key] = moves;
  return {{"game", game}, {"policy", p}};
}

Policy policy_from_json(const nlohmann::json& j, const std::string& game, const std::string& path) {
  require(j.value("game", "") == game, path + " holds a policy for '" + j.value("game", "?") + "', not " + game);
  Policy policy;
  for (const auto& [key, moves] : j.at("policy").items()) policy[key] = moves.get<std::vector<std::pair<int, double>>>();
  return policy;
}

// A language model as a player: the turn prompt goes through its chat template.
class ModelResponder {
 public:
  explicit ModelResponder(const std::string& dir)
      : model_(dir), tokenizer_(Tokenizer::load(std::filesystem::path(dir) / "tokenizer.json")),
        session_(model_, std::min(model_.config().max_position_embeddings, 8192)) {
    const auto config_path = std::filesystem::path(dir) / "tokenizer_config.json";
    if (std::filesystem::exists(config_path)) config_ = read_tokenizer_config(dir);
    sampling_.temperature = 0.6f;  // MARS samples at 0.6
  }
  std::string operator()(const std::string& prompt) {
    std::string text = prompt;
    if (config_.contains("chat_template")) {
      ChatRequest request;
      request.messages.push_back({{"role", "user"}, {"content", prompt}});
      text = apply_chat_template(config_, request);
    }
    session_.reset();
    Sampler sampler(sampling_);
    sampling_.seed++;
    const auto result = generate(session_, tokenizer_.encode(text), 256, sampler, model_.config().eos_token_ids);
    return tokenizer_.decode(result.tokens, true);
  }

 private:
  Model model_;
  Tokenizer tokenizer_;
  InferenceSession session_;
  nlohmann::json config_ = nlohmann::json::object();
  SamplingParams sampling_;
};

struct PlayArgs {
  std::string game, p0 = "mcts", p1 = "random";
  int games = 100, mcts_simulations = 1000, cfr_iterations = 1000;
  uint64_t seed = 0;
};

std::unique_ptr<Agent> make_agent(const std::string& spec, const Game& game, const PlayArgs& a) {
  if (spec == "random") return std::make_unique<RandomAgent>();
  if (spec == "mcts") {
    require(game.info().perfect_information, "mcts plays perfect-information games only; use cfr for " + game.info().name);
    return std::make_unique<MctsAgent>(a.mcts_simulations);
  }
  if (spec == "cfr" || spec.rfind("cfr:", 0) == 0) {
    if (spec.size() > 4) {
      const std::string path = spec.substr(4);
      return std::make_unique<PolicyAgent>(policy_from_json(read_json_file(path), game.info().name, path), spec);
    }
    log_info("solving " + game.info().name + " with " + std::to_string(a.cfr_iterations) + " CFR+ iterations");
    CfrSolver solver(game);
    solver.iterate(a.cfr_iterations);
    return std::make_unique<PolicyAgent>(solver.average_policy(), "cfr");
  }
  if (spec == "rules") {
    require(game.info().name == "hanabi", "'rules' is the rule-based Hanabi partner");
    return make_hanabi_partner();
  }
  if (spec == "human") {
    return std::make_unique<TextAgent>(
        [](const std::string& prompt) {
          std::printf("\n%s\n> ", prompt.c_str());
          std::fflush(stdout);
          std::string line;
          if (!std::getline(std::cin, line)) return std::string();
          // A person may type the bare action.
          return line.find("<answer>") == std::string::npos ? "<answer>" + line + "</answer>" : line;
        },
        "human");
  }
  if (spec.rfind("model:", 0) == 0) {
    auto responder = std::make_shared<ModelResponder>(spec.substr(6));
    return std::make_unique<TextAgent>([responder](const std::string& p) { return (*responder)(p); }, spec);
  }
  throw Error("unknown player '" + spec + "' (random, mcts, cfr, cfr:POLICY.json, rules, human, model:DIR)");
}

void run_play(const PlayArgs& a) {
  const auto game = make_game(a.game);
  auto p0 = make_agent(a.p0, *game, a);
  auto p1 = make_agent(a.p1, *game, a);
  Stopwatch watch;
  const MatchStats m = play_match(*game, *p0, *p1, a.games, a.seed);
  const auto show = [&](const char* what, int count) {
    const Proportion p = wilson(count, m.games);
    std::printf("  %-6s %5d  %5.1f%%  [%5.1f%%, %5.1f%%]\n", what, count, 100 * p.rate, 100 * p.low, 100 * p.high);
  };
  std::printf("%s: %s (player 0) vs %s (player 1), %d games, %.1f s\n", a.game.c_str(), p0->name().c_str(),
              p1->name().c_str(), m.games, watch.seconds());
  if (game->info().cooperative) {  // one shared score: report its mean
    std::printf("  mean score %.2f (sd %.2f), invalid answers: %d, mean shaped reward %.3f\n", m.mean_return,
                m.return_sd(), m.invalid, m.mean_shaped);
    return;
  }
  std::printf("  player 0 outcome, count, rate, 95%% Wilson interval\n");
  show("win", m.wins);
  show("draw", m.draws);
  show("loss", m.losses);
  std::printf("  invalid answers: %d; player 0 mean payoff %.3f, mean shaped reward %.3f\n", m.invalid, m.mean_return,
              m.mean_shaped);
}

void run_solve(const std::string& game_name, int iterations, const std::string& out) {
  const auto game = make_game(game_name);
  CfrSolver solver(*game);
  Stopwatch watch;
  for (int done = 0; done < iterations;) {
    const int step = std::min(iterations - done, std::max(1, iterations / 10));
    solver.iterate(step);
    done += step;
    std::fprintf(stderr, "\r  %d / %d CFR+ iterations (%.1f s)", done, iterations, watch.seconds());
  }
  std::fprintf(stderr, "\n");
  const Policy policy = solver.average_policy();
  std::printf("%s: %d CFR+ iterations in %.2f s; value for player 0 %.5f; exploitability %.6f\n", game_name.c_str(),
              iterations, watch.seconds(), expected_returns(*game, policy)[0], exploitability(*game, policy));
  if (!out.empty()) {
    write_json_file(out, policy_to_json(game_name, policy));
    log_info("wrote " + out);
  }
}

}  // namespace

void add_games(CLI::App& app) {
  CLI::App* games = app.add_subcommand("games", "Games for self-play RL: play matches, solve poker with CFR");
  games->require_subcommand(1);
  std::string names;
  for (const auto& n : game_names()) names += (names.empty() ? "" : ", ") + n;

  auto a = std::make_shared<PlayArgs>();
  CLI::App* play = games->add_subcommand("play", "Play a match and report player 0's results with 95% intervals");
  play->add_option("game", a->game,
                   "One of: " + names + "; Hanabi takes OpenSpiel-style parameters, e.g. "
                   "'hanabi(colors=2,ranks=5,hand_size=2,max_information_tokens=3,max_life_tokens=1)'")
      ->required();
  const std::string players = "random, mcts, cfr (solved now), cfr:POLICY.json, rules (Hanabi), human, model:DIR";
  play->add_option("--p0", a->p0, "Player 0: " + players)->capture_default_str();
  play->add_option("--p1", a->p1, "Player 1: " + players)->capture_default_str();
  play->add_option("-n,--games", a->games, "Games to play")->capture_default_str()->check(CLI::PositiveNumber);
  play->add_option("--seed", a->seed, "Seed for chance and random players")->capture_default_str();
  play->add_option("--mcts-simulations", a->mcts_simulations, "MCTS simulations per move")->capture_default_str();
  play->add_option("--cfr-iterations", a->cfr_iterations, "CFR+ iterations for 'cfr'")->capture_default_str();
  play->callback([a] { run_play(*a); });

  auto game = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto iterations = std::make_shared<int>(1000);
  CLI::App* solve = games->add_subcommand("solve", "Solve kuhn_poker or leduc_poker with CFR+ and save the policy");
  solve->add_option("game", *game, "kuhn_poker or leduc_poker")->required();
  solve->add_option("--iterations", *iterations, "CFR+ iterations")->capture_default_str()->check(CLI::PositiveNumber);
  solve->add_option("-o,--out", *out, "Write the average policy (JSON) here");
  solve->callback([=] { run_solve(*game, *iterations, *out); });
}

}  // namespace crossmoe::cli
