// crossmoe games eval MODEL: the model against MARS's evaluation opponents on every game, one
// table with 95% intervals (games/model_eval). The games run through the CPU runtime, one at a
// time, or through the libtorch rollout engine, many at once (--device cuda, or --backend rollout).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <tuple>

#include "model/gguf.hpp"
#include "runtime/model_files.hpp"
#include "commands.hpp"
#include "games/arena.hpp"
#include "games/model_eval.hpp"
#include "model/hf_config.hpp"
#include "runtime/generate.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"
#ifdef CROSSMOE_HAVE_TORCH
#include "rl/rollout_generator.hpp"
#else
#include "torch_build.hpp"
#endif

namespace crossmoe::cli {

namespace {

namespace fs = std::filesystem;
using namespace crossmoe::games;

// The CPU runtime as a token generator: one inference session (KV cache) per row, made when the
// row is first used; requests are answered one after the other.
class RuntimeGenerator : public TokenGenerator {
 public:
  RuntimeGenerator(const Model& model, int rows, int capacity)
      : model_(model), capacity_(capacity), sessions_(size_t(rows)), tokens_(size_t(rows)) {}
  void reset() override {
    for (auto& t : tokens_) t.clear();
    for (auto& s : sessions_)
      if (s) s->reset();
  }
  int sequences() const override { return int(tokens_.size()); }
  const std::vector<int>& tokens(int row) const override { return tokens_.at(size_t(row)); }
  int free_space(int row) const override { return capacity_ - int(tokens_.at(size_t(row)).size()); }
  std::vector<Generation> generate(const std::vector<GenerationRequest>& requests, const std::vector<int>& stop_tokens,
                                   const SamplingOptions& sampling, std::mt19937_64& rng) override {
    std::vector<Generation> out;
    for (const GenerationRequest& r : requests) {
      require(r.sequence >= 0 && r.sequence < sequences() && !r.append.empty() && r.max_new_tokens >= 1 &&
                  int(r.append.size()) + r.max_new_tokens <= free_space(r.sequence),
              "runtime generator: a request that does not fit its row");
      auto& session = sessions_[size_t(r.sequence)];
      if (!session) session = std::make_unique<InferenceSession>(model_, capacity_);
      std::vector<int>& row = tokens_[size_t(r.sequence)];
      // The previous answer's last token is in the row but not yet in the session: feed it first.
      std::vector<int> feed(row.begin() + session->position(), row.end());
      feed.insert(feed.end(), r.append.begin(), r.append.end());
      row.insert(row.end(), r.append.begin(), r.append.end());
      SamplingParams params;
      params.temperature = float(sampling.temperature);
      params.top_p = float(sampling.top_p);
      params.top_k = sampling.top_k;
      // Greedy answers draw nothing, so that chance and the opponents see the same random stream
      // as on the rollout engine.
      params.seed = sampling.temperature > 0 ? rng() : 0;
      Sampler sampler(params);
      const GenerationResult result = crossmoe::generate(*session, feed, r.max_new_tokens, sampler, stop_tokens);
      Generation g;
      g.tokens = result.tokens;
      g.stopped = !g.tokens.empty() &&
                  std::find(stop_tokens.begin(), stop_tokens.end(), g.tokens.back()) != stop_tokens.end();
      row.insert(row.end(), g.tokens.begin(), g.tokens.end());
      out.push_back(std::move(g));
    }
    return out;
  }

 private:
  const Model& model_;
  int capacity_;
  std::vector<std::unique_ptr<InferenceSession>> sessions_;
  std::vector<std::vector<int>> tokens_;
};

struct EvalArgs {
  std::string model;
  std::vector<std::string> games = mars_eval_games();
  std::vector<int> mcts_simulations = {100, 1000};
  EvalSettings settings;
  int max_sequence = 4096;
  std::string device = "cpu", backend = "auto", bf16 = "auto", out;
  bool json = false;
};

std::string seat_name(int seat) { return seat < 0 ? "both" : seat == 0 ? "first" : "second"; }

struct Interval {
  double value, low, high;
};

// The payoff's mean with a 95% normal interval (the games are independent draws).
Interval payoff_interval(const MatchupResult& r) {
  const double half = r.games > 1 ? 1.959963984540054 * r.payoff_sd / std::sqrt(double(r.games)) : 0.0;
  return {r.mean_payoff, r.mean_payoff - half, r.mean_payoff + half};
}

nlohmann::ordered_json results_json(const EvalArgs& a, const std::vector<MatchupResult>& results, double seconds) {
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const auto& r : results) {
    nlohmann::ordered_json row = {{"game", r.matchup.game},
                                  {"opponent", r.matchup.opponent},
                                  {"model_seat", seat_name(r.matchup.model_seat)},
                                  {"games", r.games}};
    if (!r.cooperative) {
      for (const auto& [name, plural, count] : {std::tuple<const char*, const char*, int>{"win", "wins", r.wins},
                                                {"draw", "draws", r.draws}, {"loss", "losses", r.losses}}) {
        const Proportion p = wilson(count, r.games);
        row[plural] = count;
        row[std::string(name) + "_rate"] = p.rate;
        row[std::string(name) + "_interval"] = {p.low, p.high};
      }
    }
    const Interval pay = payoff_interval(r);
    row[r.cooperative ? "mean_score" : "mean_payoff"] = pay.value;
    row[r.cooperative ? "score_interval" : "payoff_interval"] = {pay.low, pay.high};
    row["forfeits"] = r.forfeits;
    row["answers"] = r.answers;
    row["mean_answer_tokens"] = r.answers ? double(r.answer_tokens) / r.answers : 0.0;
    rows.push_back(row);
  }
  const auto& m = a.settings.match;
  return {{"model", a.model},
          {"settings",
           {{"games_per_matchup", a.settings.games_per_matchup},
            {"seed", a.settings.seed},
            {"temperature", m.sampling.temperature},
            {"top_p", m.sampling.top_p},
            {"top_k", m.sampling.top_k},
            {"max_new_tokens", m.max_new_tokens},
            {"max_sequence", a.max_sequence},
            {"mcts_uct_c", a.settings.mcts_uct_c},
            {"mcts_rollouts", a.settings.mcts_rollouts},
            {"cfr_iterations", a.settings.cfr_iterations}}},
          {"seconds", seconds},
          {"results", rows}};
}

std::string percent_cell(int count, int games) {
  const Proportion p = wilson(count, games);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%5.1f%% [%5.1f, %5.1f]", 100 * p.rate, 100 * p.low, 100 * p.high);
  return buf;
}

std::string payoff_cell(const MatchupResult& r) {
  const Interval p = payoff_interval(r);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%s%.3f [%.3f, %.3f]", r.cooperative ? "score " : "", p.value, p.low, p.high);
  return buf;
}

// One table: a row per matchup; rates of the model's wins, draws and losses with 95% Wilson
// intervals; games the model forfeited; its mean payoff (Hanabi: the pair's score) with a 95% interval.
std::vector<std::vector<std::string>> table_cells(const std::vector<MatchupResult>& results) {
  std::vector<std::vector<std::string>> cells = {
      {"game", "opponent", "model", "games", "win", "draw", "loss", "forfeits", "mean payoff"}};
  for (const auto& r : results) {
    const bool c = r.cooperative;
    cells.push_back({r.matchup.game, r.matchup.opponent, seat_name(r.matchup.model_seat), std::to_string(r.games),
                     c ? "-" : percent_cell(r.wins, r.games), c ? "-" : percent_cell(r.draws, r.games),
                     c ? "-" : percent_cell(r.losses, r.games), std::to_string(r.forfeits), payoff_cell(r)});
  }
  return cells;
}

std::string text_table(const std::vector<std::vector<std::string>>& cells) {
  std::vector<size_t> width(cells[0].size(), 0);
  for (const auto& row : cells)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  std::string out;
  for (const auto& row : cells) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const bool right = c == 3 || c == 7;  // counts
      const std::string pad(width[c] - row[c].size(), ' ');
      line += (c ? "  " : "") + (right ? pad + row[c] : row[c] + (c + 1 < row.size() ? pad : ""));
    }
    out += line + "\n";
  }
  return out;
}

// The terminal table's alignment padding squeezed out: "[  2.8,  30.1]" becomes "[2.8, 30.1]".
std::string squeezed(const std::string& cell) {
  std::string out;
  for (char c : cell) {
    const bool after_gap = out.empty() || out.back() == ' ' || out.back() == '[';
    if (c == ' ' && after_gap) continue;
    out += c;
  }
  return out;
}

std::string markdown_table(const std::vector<std::vector<std::string>>& cells) {
  std::string out;
  for (size_t r = 0; r < cells.size(); ++r) {
    out += "|";
    for (const auto& cell : cells[r]) out += " " + squeezed(cell) + " |";
    out += "\n";
    if (r == 0) {
      out += "|";
      for (size_t c = 0; c < cells[0].size(); ++c) out += c == 3 || c == 7 ? "---:|" : "---|";
      out += "\n";
    }
  }
  return out;
}

void run_eval(EvalArgs a) {
  // Everything the command line says is checked before the model loads or any game is played.
  std::vector<Matchup> matchups;
  try {
    for (int n : a.mcts_simulations) validate(MctsOptions{a.settings.mcts_uct_c, n, a.settings.mcts_rollouts});
    matchups = mars_matchups(a.games, a.mcts_simulations);
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(std::string("--games: ") + e.what());
  }
  if (a.backend == "auto") a.backend = a.device == "cpu" ? "runtime" : "rollout";
  if (a.backend == "runtime" && a.device != "cpu")
    throw UsageError("--backend runtime runs on the CPU; --device " + a.device + " needs --backend rollout");
  require(fs::is_directory(a.model) || (is_gguf_file(a.model) && a.backend == "runtime"),
          "no model directory " + a.model + (is_gguf_file(a.model) ? " (a GGUF file plays with --backend runtime)" : ""));
  if (!a.out.empty()) {  // a table that cannot be written is known before the games are played
    std::ofstream probe(a.out, std::ios::app);
    require(probe.good(), "-o: cannot write " + a.out);
  }
  const ModelConfig config = read_model_config(a.model);
  ChatModel chat = make_chat_model(require_model_tokenizer(a.model, "a model plays games through its tokenizer"),
                                   model_tokenizer_config(a.model).value_or(nlohmann::json::object()),
                                   config.eos_token_ids, a.model);
  const int capacity = std::min(a.max_sequence, config.max_position_embeddings);
  // MARS ends a game when an answer leaves min_tokens_left or fewer tokens free: a row needs room
  // for a prompt token, an answer token and more than that, or every game is a forfeit.
  const int room_needed = a.settings.match.rewards.min_tokens_left + 3;
  require(capacity >= room_needed,
          "a seat's conversation has room for " + std::to_string(capacity) + " tokens (the smaller of --max-sequence " +
              "and the model's context), but MARS forfeits an answer that leaves " +
              std::to_string(a.settings.match.rewards.min_tokens_left) + " or fewer free: " +
              std::to_string(room_needed) + " at least are needed");
  EvalSettings& s = a.settings;
  s.mcts_simulations = a.mcts_simulations;
  std::unique_ptr<Model> cpu_model;
  std::unique_ptr<TokenGenerator> generator;
  if (a.backend == "runtime") {
    s.batch = 1;  // the runtime answers one request at a time: nothing gained by more games at once
    cpu_model = std::make_unique<Model>(a.model);
    generator = std::make_unique<RuntimeGenerator>(*cpu_model, 2 * s.batch, capacity);
  } else {
#ifdef CROSSMOE_HAVE_TORCH
    const bool bf16 = a.bf16 == "auto" ? a.device != "cpu" : a.bf16 == "on";
    generator = rl::make_rollout_generator(a.model, a.device, bf16, 2 * s.batch, capacity);
#else
    require_torch_build("--backend rollout (and --device " + a.device + "; --device cpu plays through the CPU runtime)");
#endif
  }
  Stopwatch watch;
  const int total = int(matchups.size()) * s.games_per_matchup;
  ProgressBar bar(total);
  const std::vector<MatchupResult> results =
      evaluate_model(matchups, *generator, chat, s, [&](int done, int) { bar.update(done, "games"); });
  bar.finish(std::to_string(total) + " games");
  const nlohmann::ordered_json json = results_json(a, results, watch.seconds());
  const auto cells = table_cells(results);
  if (a.json) {
    std::printf("%s\n", json.dump(2).c_str());
  } else {
    std::printf("%s: %d games per row, %s backend, temperature %g; 95%% intervals (Wilson for rates, normal for "
                "payoffs)\n%s",
                a.model.c_str(), s.games_per_matchup, a.backend.c_str(), s.match.sampling.temperature,
                text_table(cells).c_str());
  }
  std::fflush(stdout);
  if (!a.out.empty()) {
    const bool as_json = fs::path(a.out).extension() == ".json";
    std::ofstream file(a.out, std::ios::trunc);
    require(file.good(), "cannot write " + a.out);
    file << (as_json ? json.dump(2) + "\n" : markdown_table(cells));
    file.close();
    require(file.good(), "cannot write " + a.out);
    log_info("wrote " + a.out);
  }
}

}  // namespace

void add_games_eval_command(CLI::App& games) {
  auto a = std::make_shared<EvalArgs>();
  EvalSettings& s = a->settings;
  s.match.max_new_tokens = 256;
  s.batch = 256;
  CLI::App* cmd = games.add_subcommand(
      "eval", "Evaluate a model on MARS's games against MARS's evaluation opponents: one table with 95% intervals");
  cmd->add_option("model", a->model, "Model directory (with tokenizer.json and a chat template)")->required();
  std::string names;
  for (const auto& n : mars_eval_games()) names += (names.empty() ? "" : ",") + n;
  cmd->add_option("--games", a->games,
                  "Games, comma-separated; two-player games get MARS's opponents (MCTS, cfr for Kuhn, nash for "
                  "Leduc), cooperative ones self-play")
      ->delimiter(',')
      ->default_str(names);
  cmd->add_option("-n,--games-per-row", s.games_per_matchup,
                  "Games per opponent and seat (MARS: 1500 over its 15 rows, about 100 each)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--mcts-simulations", a->mcts_simulations, "MCTS opponents' simulations, comma-separated (MARS: 100,1000)")
      ->delimiter(',')
      ->default_str("100,1000")
      ->check(whole_number(2));
  cmd->add_option("--mcts-rollouts", s.mcts_rollouts, "Random rollouts per MCTS leaf (MARS: 10)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--mcts-uct-c", s.mcts_uct_c, "MCTS exploration constant (MARS: 2)")
      ->capture_default_str()
      ->check(real_number(0));
  cmd->add_option("--cfr-iterations", s.cfr_iterations, "CFR iterations of the Kuhn opponent (MARS: 1000)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--seed", s.seed, "Seed for chance, the opponents and sampling")->capture_default_str();
  cmd->add_option("--temperature", s.match.sampling.temperature,
                  "Sampling temperature, 0 = greedy (MARS evaluates sampling at 0.6)")
      ->capture_default_str()
      ->check(real_number(0));
  cmd->add_option("--top-p", s.match.sampling.top_p, "Nucleus mass (MARS: 0.99)")
      ->capture_default_str()
      ->check(real_number(0, 1));
  cmd->add_option("--top-k", s.match.sampling.top_k, "Keep the k most likely tokens, 0 = off (MARS: 100)")
      ->capture_default_str()
      ->check(whole_number(0));
  cmd->add_option("--max-new-tokens", s.match.max_new_tokens,
                  "Tokens per answer; an answer without an end forfeits (rl selfplay's default; MARS: 4096)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--max-sequence", a->max_sequence,
                  "Tokens of one seat's conversation, at most the model's context (rl selfplay's default; MARS: 32768)")
      ->capture_default_str()
      ->check(whole_number(2));
  cmd->add_option("--max-turns", s.match.max_turns, "Actions per game at most (MARS: 50)")
      ->capture_default_str()
      ->check(positive());
  cmd->add_option("--device", a->device, "cpu (the CPU runtime), cuda or cuda:N (the rollout engine)")
      ->capture_default_str();
  cmd->add_option("--backend", a->backend,
                  "auto (runtime on cpu, rollout engine on cuda), runtime, or rollout (libtorch, also on cpu)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "runtime", "rollout"}));
  cmd->add_option("--batch", s.batch, "Rollout engine: games played at once")->capture_default_str()->check(positive());
  cmd->add_option("--bf16", a->bf16, "Rollout engine: bf16 matrix products: auto (on for cuda), on, off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_flag("--json", a->json, "Print the results as JSON instead of the table");
  cmd->add_option("-o,--out", a->out, "Also write the table to this file: JSON when it ends in .json, else markdown");
  add_threads_option(*cmd);
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace crossmoe::cli
