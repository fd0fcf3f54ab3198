// crossmoe games info | play | solve | transcripts: what a game is, matches between opponents,
// models and humans, CFR solutions, reference players' conversations for supervised warm starts.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "runtime/model_files.hpp"
#include "commands.hpp"
#include "option_checks.hpp"
#include "games/arena.hpp"
#include "games/cfr.hpp"
#include "games/conversation.hpp"
#include "runtime/generate.hpp"
#include "tokenizer/chat_template.hpp"
#include "tokenizer/tokenizer.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

using namespace crossmoe::games;

std::string game_list() {
  std::string names;
  for (const auto& n : game_names()) names += (names.empty() ? "" : ", ") + n;
  return names;
}

// ---- games info -------------------------------------------------------------------------------

void run_info(const std::string& spec) {
  const auto game = make_game(spec);
  const GameInfo& info = game->info();
  std::printf("%s (OpenSpiel's %s)\n", info.name.c_str(), info.family.c_str());
  std::printf("  players              %d%s\n", info.num_players, info.cooperative ? ", cooperative (one shared score)" : "");
  std::printf("  information          %s\n", info.perfect_information ? "perfect" : "imperfect (hidden cards)");
  std::printf("  distinct actions     %d\n", info.num_distinct_actions);
  std::printf("  chance outcomes      %s\n", info.max_chance_outcomes ? std::to_string(info.max_chance_outcomes).c_str() : "none");
  std::printf("  payoffs              %g to %g\n", info.min_utility, info.max_utility);
  if (!info.parameters.empty()) {
    std::string params;
    for (const auto& [key, value] : info.parameters) params += (params.empty() ? "" : ", ") + key + "=" + std::to_string(value);
    std::printf("  parameters           %s\n", params.c_str());
  }
  const MarsRewards mars;
  std::printf("  MARS rewards         game rewards%s; invalid answer: -(%s) - %g, others 0; +%g per valid turn\n",
              info.zero_terminal_reward_is_draw ? ", a final 0 counts 0.1" : "",
              info.family == "hanabi" || info.family == "tiny_hanabi" ? "score so far"
              : info.perfect_information                              ? "1"
                                                                      : "own chips in the pot",
              mars.forfeit_extra, mars.format_penalty);
  std::printf("  opponents            %s\n", info.perfect_information ? "random, mcts (MARS: uct_c 2, 100 or 1000 simulations, 10 rollouts)"
                                          : info.family == "hanabi"   ? "self-play (MARS), random, rules"
                                          : info.cooperative          ? "self-play, random"
                                          : info.name == "leduc_poker" ? "random, cfr, nash (MARS's Leduc opponent)"
                                                                       : "random, cfr (MARS: 1000 iterations)");
  std::printf("  rules                %s\n", info.rules.c_str());
}

// ---- players ----------------------------------------------------------------------------------

struct ModelOptions {
  int max_tokens = 1024;
  float temperature = 0.6f, top_p = 0.99f;  // MARS samples at 0.6, top_p 0.99, top_k 100
  int top_k = 100;
};

// A language model as a player: the turn prompt goes through its chat template and, as MARS
// does, the reply is started with "<think>\n", which counts as part of the answer.
class ModelResponder {
 public:
  ModelResponder(const std::string& dir, const ModelOptions& options, uint64_t seed)
      : model_(dir), tokenizer_(require_model_tokenizer(dir, "a model plays games through its tokenizer")),
        session_(model_, std::min(model_.config().max_position_embeddings, 8192)), max_tokens_(options.max_tokens) {
    config_ = model_tokenizer_config(dir).value_or(config_);
    sampling_.temperature = options.temperature;
    sampling_.top_p = options.top_p;
    sampling_.top_k = options.top_k;
    sampling_.seed = seed;
    context_ = std::min(model_.config().max_position_embeddings, 8192);
  }
  std::string operator()(const std::string& prompt) {
    std::string text = prompt;
    if (config_.contains("chat_template")) {
      ChatRequest request;
      request.messages.push_back({{"role", "user"}, {"content", prompt}});
      text = apply_chat_template(config_, request);
    }
    text += kThinkStart;
    const std::vector<int> ids = tokenizer_.encode(text);
    if (int(ids.size()) >= context_) return "";  // no room to answer: an invalid answer
    session_.reset();
    Sampler sampler(sampling_);
    sampling_.seed++;
    const auto result = generate(session_, ids, std::min(max_tokens_, context_ - int(ids.size())), sampler,
                                 model_.config().eos_token_ids);
    return kThinkStart + tokenizer_.decode(result.tokens, true);
  }

 private:
  static constexpr const char* kThinkStart = "<think>\n";
  Model model_;
  Tokenizer tokenizer_;
  InferenceSession session_;
  int max_tokens_, context_ = 0;
  nlohmann::json config_ = nlohmann::json::object();
  SamplingParams sampling_;
};

// A person at the terminal: sees the turn prompt; an illegal move is explained and asked again.
class HumanAgent : public Agent {
 public:
  int act(const Game& game, const State& state, Rng&) override {
    std::printf("\n%s\n", turn_prompt(game, state).c_str());
    for (;;) {
      std::printf("Your move (as listed, OpenSpiel's name, or the action number)> ");
      std::fflush(stdout);
      std::string line;
      if (!std::getline(std::cin, line)) {
        std::printf("\n");
        std::fflush(stdout);  // the error line goes to stderr: keep it after the prompt
        throw Error("standard input ended before the game did");
      }
      const ParsedAnswer move = parse_human_move(line, game, state);
      if (move.action >= 0) return move.action;
      std::string legal;
      for (int a : state.legal_actions()) {
        legal += ' ';
        legal += answer_text(game, state, a);
      }
      std::printf("%s. Legal moves:%s\n", move.error.c_str(), legal.c_str());
    }
  }
  std::string name() const override { return "human"; }
};

struct PlayArgs {
  std::string game, p0 = "mcts", p1 = "random";
  int games = 100, cfr_iterations = 1000;
  std::string cfr_variant = "cfr";
  MctsOptions mcts;
  ModelOptions model;
  uint64_t seed = 0;
};

// Every flag and player is checked before any work (solving, loading a model) starts.
void validate_play(const PlayArgs& a, const Game& game) {
  validate(a.mcts);
  require(a.cfr_iterations >= 1, "--cfr-iterations must be at least 1, got " + std::to_string(a.cfr_iterations));
  require(a.cfr_variant == "cfr" || a.cfr_variant == "cfr+", "--cfr-variant must be cfr or cfr+, got " + a.cfr_variant);
  require(a.model.max_tokens >= 1, "--max-tokens must be at least 1, got " + std::to_string(a.model.max_tokens));
  require(std::isfinite(a.model.temperature) && a.model.temperature >= 0, "--temperature must be a number >= 0");
  for (const std::string* spec : {&a.p0, &a.p1}) {
    const std::string& s = *spec;
    const std::string flag = spec == &a.p0 ? "--p0" : "--p1";
    try {
      if (s == "mcts")
        require(game.info().perfect_information, "mcts plays perfect-information games only; use cfr or nash for " +
                                                     game.info().name);
      else if (s == "cfr" || s.rfind("cfr:", 0) == 0)
        require_cfr_solvable(game);
      else if (s == "nash")
        nash_policy(game);
      else if (s == "rules")
        require(game.info().family == "hanabi", "'rules' is the rule-based Hanabi partner");
      else if (s.rfind("model:", 0) == 0)
        require(std::filesystem::is_directory(s.substr(6)), "no model directory " + s.substr(6));
      else if (s != "random" && s != "human")
        throw Error("unknown player '" + s + "' (random, mcts, cfr, cfr:POLICY.json, nash, rules, human, model:DIR)");
    } catch (const Error& e) {
      throw Error(flag + " " + s + ": " + e.what());
    }
  }
}

std::unique_ptr<Agent> make_agent(const std::string& spec, const Game& game, const PlayArgs& a) {
  if (spec == "random") return std::make_unique<RandomAgent>();
  if (spec == "mcts") return std::make_unique<MctsAgent>(a.mcts);
  if (spec == "nash") return std::make_unique<PolicyAgent>(nash_policy(game), "nash");
  if (spec.rfind("cfr:", 0) == 0) return std::make_unique<PolicyAgent>(read_policy_file(spec.substr(4), game), spec);
  if (spec == "cfr") {
    log_info("solving " + game.info().name + " with " + std::to_string(a.cfr_iterations) + " " + a.cfr_variant +
             " iterations");
    CfrSolver solver(game, a.cfr_variant == "cfr" ? CfrSolver::Variant::Cfr : CfrSolver::Variant::CfrPlus);
    solver.iterate(a.cfr_iterations);
    return std::make_unique<PolicyAgent>(solver.average_policy(), "cfr");
  }
  if (spec == "rules") return make_hanabi_partner();
  if (spec == "human") return std::make_unique<HumanAgent>();
  auto responder = std::make_shared<ModelResponder>(spec.substr(6), a.model, a.seed);
  return std::make_unique<TextAgent>([responder](const std::string& p) { return (*responder)(p); }, spec);
}

// ---- games play -------------------------------------------------------------------------------

std::string outcome_text(const Game& game, const EpisodeResult& r) {
  std::string s;
  if (r.invalid_player >= 0) s = "player " + std::to_string(r.invalid_player) + " gave an invalid answer and forfeits; ";
  if (game.info().cooperative) return s + "score " + std::to_string(int(r.returns[0]));
  const double v = r.returns[0];
  char payoff[64];
  std::snprintf(payoff, sizeof payoff, " (payoffs %g, %g)", r.returns[0], r.returns[1]);
  return s + (v > 0 ? "player 0 wins" : v < 0 ? "player 1 wins" : "a draw") + payoff;
}

void run_play(const PlayArgs& a) {
  const auto game = make_game(a.game);
  validate_play(a, *game);
  auto p0 = make_agent(a.p0, *game, a);
  auto p1 = make_agent(a.p1, *game, a);
  const bool human = a.p0 == "human" || a.p1 == "human";
  Stopwatch watch;
  const MatchStats m = play_match(*game, *p0, *p1, a.games, a.seed, [&](const EpisodeResult& r, const MatchStats& so_far) {
    if (human) {  // show how the game ended
      std::printf("\nGame %d is over:\n%s%s\n", so_far.games, r.final_state->to_string().c_str(), outcome_text(*game, r).c_str());
      std::fflush(stdout);
    } else {
      std::fprintf(stderr, "\r  %d / %d games, player 0: %d won, %d drawn, %d lost (%.1f s)", so_far.games, a.games,
                   so_far.wins, so_far.draws, so_far.losses, watch.seconds());
      if (so_far.games == a.games) std::fprintf(stderr, "\n");
    }
  });
  const auto show = [&](const char* what, int count) {
    const Proportion p = wilson(count, m.games);
    std::printf("  %-6s %5d  %5.1f%%  [%5.1f%%, %5.1f%%]\n", what, count, 100 * p.rate, 100 * p.low, 100 * p.high);
  };
  std::printf("%s: %s (player 0) vs %s (player 1), %d games, %.1f s\n", a.game.c_str(), p0->name().c_str(),
              p1->name().c_str(), m.games, watch.seconds());
  if (game->info().cooperative) {  // one shared score: report its mean
    std::printf("  mean score %.2f (sd %.2f), invalid answers: %d, mean MARS reward %.3f\n", m.mean_return,
                m.return_sd(), m.invalid, m.mean_mars_reward);
    return;
  }
  std::printf("  player 0 outcome, count, rate, 95%% Wilson interval\n");
  show("win", m.wins);
  show("draw", m.draws);
  show("loss", m.losses);
  std::printf("  invalid answers: %d; player 0 mean payoff %.3f, mean MARS reward %.3f\n", m.invalid, m.mean_return,
              m.mean_mars_reward);
}

// ---- games solve ------------------------------------------------------------------------------

void run_solve(const std::string& game_name, int iterations, const std::string& out) {
  const auto game = make_game(game_name);
  require_cfr_solvable(*game);
  require(iterations >= 1, "--iterations must be at least 1, got " + std::to_string(iterations));
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
    write_policy_file(out, *game, policy);
    log_info("wrote " + out);
  }
}

// ---- the commands -----------------------------------------------------------------------------

void add_info_command(CLI::App& games) {
  auto spec = std::make_shared<std::string>();
  CLI::App* info = games.add_subcommand("info", "A game's parameters, players, actions and MARS setting");
  info->add_option("game", *spec, "One of: " + game_list() + "; parameters as in 'hanabi(colors=3,ranks=2)'")->required();
  info->callback([spec] { run_info(*spec); });
}

void add_play_command(CLI::App& games) {
  auto a = std::make_shared<PlayArgs>();
  CLI::App* play = games.add_subcommand("play", "Play a match and report player 0's results with 95% intervals");
  play->add_option("game", a->game,
                   "One of: " + game_list() + "; Hanabi takes OpenSpiel-style parameters, e.g. "
                   "'hanabi(colors=2,ranks=5,hand_size=2,max_information_tokens=3,max_life_tokens=1)'")
      ->required();
  const std::string players =
      "random, mcts, cfr (solved now), cfr:POLICY.json, nash (leduc_poker's Nash equilibrium), rules (Hanabi), "
      "human, model:DIR";
  play->add_option("--p0", a->p0, "Player 0: " + players)->capture_default_str();
  play->add_option("--p1", a->p1, "Player 1: " + players)->capture_default_str();
  play->add_option("-n,--games", a->games, "Games to play")->capture_default_str()->check(positive());
  play->add_option("--seed", a->seed, "Seed for chance, random players and model sampling")->capture_default_str();
  play->add_option("--mcts-simulations", a->mcts.simulations, "MCTS simulations per move (MARS: 100 or 1000)")
      ->capture_default_str();
  play->add_option("--mcts-rollouts", a->mcts.rollouts, "Random rollouts per MCTS leaf (MARS: 10)")->capture_default_str();
  play->add_option("--mcts-uct-c", a->mcts.uct_c, "MCTS exploration constant (MARS: 2)")->capture_default_str();
  play->add_option("--cfr-iterations", a->cfr_iterations, "Iterations for 'cfr' (MARS's Kuhn opponent: 1000)")
      ->capture_default_str();
  play->add_option("--cfr-variant", a->cfr_variant,
                   "Solver for 'cfr': cfr (OpenSpiel's CFRSolver, as MARS's Kuhn opponent) or cfr+")
      ->capture_default_str();
  play->add_option("--max-tokens", a->model.max_tokens, "Model player: tokens per answer at most (MARS: 4096)")
      ->capture_default_str();
  play->add_option("--temperature", a->model.temperature, "Model player: sampling temperature, 0 = greedy (MARS: 0.6)")
      ->capture_default_str();
  play->add_option("--top-p", a->model.top_p, "Model player: nucleus mass (MARS: 0.99)")->capture_default_str();
  play->add_option("--top-k", a->model.top_k, "Model player: keep the k most likely tokens, 0 = off (MARS: 100)")
      ->capture_default_str();
  add_threads_option(*play);
  play->callback([a] { run_play(*a); });
}

void add_solve_command(CLI::App& games) {
  auto game = std::make_shared<std::string>(), out = std::make_shared<std::string>();
  auto iterations = std::make_shared<int>(1000);
  CLI::App* solve = games.add_subcommand("solve", "Solve kuhn_poker or leduc_poker with CFR+ and save the policy");
  solve->add_option("game", *game, "kuhn_poker or leduc_poker")->required();
  solve->add_option("--iterations", *iterations, "CFR+ iterations")->capture_default_str();
  solve->add_option("-o,--out", *out, "Write the average policy (JSON, for --p0 cfr:FILE) here");
  solve->callback([=] { run_solve(*game, *iterations, *out); });
}

// ---- games transcripts ------------------------------------------------------------------------

// The reference player for a game: MCTS for perfect information, CFR for poker, the rule-based
// partner for Hanabi.
std::string reference_player(const Game& game) {
  if (game.info().perfect_information) return "mcts";
  return game.info().family == "hanabi" ? "rules" : "cfr";
}

void run_transcripts(PlayArgs a, const std::string& out) {
  const auto game = make_game(a.game);
  if (a.p0.empty()) a.p0 = reference_player(*game);
  if (a.p1.empty()) a.p1 = reference_player(*game);
  validate_play(a, *game);
  require(a.p0.rfind("model:", 0) != 0 && a.p1.rfind("model:", 0) != 0 && a.p0 != "human" && a.p1 != "human",
          "transcripts are of reference players, not models or people");
  auto p0 = make_agent(a.p0, *game, a);
  auto p1 = make_agent(a.p1, *game, a);
  std::ofstream file(out, std::ios::trunc);
  require(file.good(), "cannot write " + out);
  Rng rng(a.seed);
  int conversations = 0;
  for (int g = 0; g < a.games; ++g) {
    for (const auto& messages : play_transcript(*game, {p0.get(), p1.get()}, rng)) {
      if (messages.empty()) continue;
      file << nlohmann::ordered_json{{"messages", messages}}.dump() << "\n";
      ++conversations;
    }
  }
  file.close();
  require(file.good(), "cannot write " + out);
  std::printf("%s: %d games of %s vs %s, %d conversations written to %s\n", a.game.c_str(), a.games, p0->name().c_str(),
              p1->name().c_str(), conversations, out.c_str());
}

void add_transcripts_command(CLI::App& games) {
  auto t = std::make_shared<PlayArgs>();
  t->p0 = t->p1 = "";
  auto out = std::make_shared<std::string>();
  CLI::App* cmd = games.add_subcommand(
      "transcripts", "Write chat conversations (jsonl, one {\"messages\": [...]} per game and seat) of reference "
                     "players playing through the text protocol: SFT data for `train --sft`");
  cmd->add_option("game", t->game, "One of: " + game_list())->required();
  cmd->add_option("-n,--games", t->games, "Games to play")->capture_default_str()->check(cli::positive());
  cmd->add_option("-o,--out", *out, "Output jsonl file")->required();
  cmd->add_option("--p0", t->p0, "Player 0 (default: mcts, cfr for poker, rules for Hanabi): random, mcts, cfr, "
                                 "cfr:POLICY.json, nash, rules");
  cmd->add_option("--p1", t->p1, "Player 1 (default as --p0)");
  cmd->add_option("--seed", t->seed, "Seed for chance and the players")->capture_default_str();
  cmd->add_option("--mcts-simulations", t->mcts.simulations, "MCTS simulations per move")->capture_default_str();
  cmd->add_option("--cfr-iterations", t->cfr_iterations, "Iterations for 'cfr'")->capture_default_str();
  cmd->callback([t, out] { run_transcripts(*t, *out); });
}

}  // namespace

void add_games(CLI::App& app) {
  CLI::App* games = app.add_subcommand("games", "Games for self-play RL: describe them, play matches, solve poker with CFR, write transcripts, evaluate a model");
  games->require_subcommand(1);
  add_info_command(*games);
  add_play_command(*games);
  add_solve_command(*games);
  add_transcripts_command(*games);
  add_games_eval_command(*games);
}

}  // namespace crossmoe::cli
