#include "games/model_eval.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "games/cfr.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

const std::vector<std::string>& mars_eval_games() {
  static const std::vector<std::string> names = {"tic_tac_toe",  "kuhn_poker",    "mini_hanabi", "connect_four",
                                                  "leduc_poker",  "simple_hanabi", "full_hanabi"};
  return names;
}

std::vector<Matchup> mars_matchups(const std::vector<std::string>& games, const std::vector<int>& mcts_simulations) {
  require(!games.empty(), "no games to evaluate on");
  std::vector<Matchup> out;
  for (size_t i = 0; i < games.size(); ++i) {
    const std::string& name = games[i];
    require(std::find(games.begin(), games.begin() + std::ptrdiff_t(i), name) == games.begin() + std::ptrdiff_t(i),
            name + " is named twice");
    const auto game = make_game(name);
    const GameInfo& info = game->info();
    if (info.cooperative) {
      out.push_back({name, "self-play", -1});
      continue;
    }
    require(info.num_players == 2, name + ": evaluation is for two-player games");
    std::vector<std::string> opponents;
    if (info.perfect_information) {
      require(!mcts_simulations.empty(), "no MCTS simulation counts for " + name);
      for (int n : mcts_simulations) opponents.push_back("mcts-" + std::to_string(n));
    } else if (info.name == "kuhn_poker") {
      opponents.push_back("cfr");
    } else if (info.name == "leduc_poker") {
      opponents.push_back("nash");
    } else {
      throw Error(name + " has no evaluation opponent (MCTS for perfect-information games, CFR for Kuhn, the Nash "
                         "policy for Leduc, self-play for cooperative games)");
    }
    for (const auto& opponent : opponents)
      for (int seat : {0, 1}) out.push_back({name, opponent, seat});
  }
  return out;
}

namespace {

// The fixed players, made once per game and opponent (solving Kuhn with CFR takes a moment).
class Opponents {
 public:
  explicit Opponents(const EvalSettings& s) : s_(s) {}
  Agent* get(const Game& game, const std::string& opponent) {
    auto& slot = agents_[game.info().name + "/" + opponent];
    if (slot) return slot.get();
    if (opponent.rfind("mcts-", 0) == 0) {
      slot = std::make_unique<MctsAgent>(MctsOptions{s_.mcts_uct_c, std::stoi(opponent.substr(5)), s_.mcts_rollouts});
    } else if (opponent == "cfr") {
      CfrSolver solver(game, CfrSolver::Variant::Cfr);  // OpenSpiel's CFRSolver, as MARS's Kuhn opponent
      solver.iterate(s_.cfr_iterations);
      slot = std::make_unique<PolicyAgent>(solver.average_policy(), "cfr");
    } else if (opponent == "nash") {
      slot = std::make_unique<PolicyAgent>(nash_policy(game), "nash");
    } else {
      throw Error("no evaluation opponent '" + opponent + "'");
    }
    return slot.get();
  }

 private:
  const EvalSettings& s_;
  std::map<std::string, std::unique_ptr<Agent>> agents_;
};

}  // namespace

std::vector<MatchupResult> evaluate_model(const std::vector<Matchup>& matchups, TokenGenerator& generator,
                                          ChatModel& chat, const EvalSettings& s,
                                          const std::function<void(int, int)>& progress) {
  require(s.games_per_matchup >= 1, "games per matchup must be at least 1");
  require(s.batch >= 1 && 2 * s.batch <= generator.sequences(), "the generator has too few rows for the batch");
  std::map<std::string, std::unique_ptr<Game>> games;
  for (const auto& m : matchups)
    if (!games.count(m.game)) games[m.game] = make_game(m.game);
  Opponents opponents(s);

  std::vector<MatchupResult> results(matchups.size());
  std::vector<double> sum_squares(matchups.size(), 0.0);
  for (size_t i = 0; i < matchups.size(); ++i) {
    results[i].matchup = matchups[i];
    results[i].cooperative = games.at(matchups[i].game)->info().cooperative;
    if (matchups[i].model_seat >= 0) opponents.get(*games.at(matchups[i].game), matchups[i].opponent);
  }
  const int total = int(matchups.size()) * s.games_per_matchup;
  std::mt19937_64 rng(s.seed);
  for (int first = 0; first < total; first += s.batch) {
    const int count = std::min(s.batch, total - first);
    std::vector<Match> matches;
    std::vector<size_t> owner;
    int row = 0;
    for (int k = first; k < first + count; ++k) {
      const size_t mi = size_t(k / s.games_per_matchup);
      const Matchup& up = matchups[mi];
      Match m;
      m.game_name = up.game;
      m.game = games.at(up.game).get();
      m.state = m.game->initial_state();
      m.seats.resize(size_t(m.game->info().num_players));
      for (int seat = 0; seat < int(m.seats.size()); ++seat) {
        if (up.model_seat < 0 || seat == up.model_seat) m.seats[size_t(seat)].row = row++;
        else m.seats[size_t(seat)].agent = opponents.get(*m.game, up.opponent);
      }
      require(row <= generator.sequences(), "the generator has too few rows for the batch");
      matches.push_back(std::move(m));
      owner.push_back(mi);
    }
    play_matches(matches, generator, chat, s.match, rng);
    for (size_t j = 0; j < matches.size(); ++j) {
      const Match& m = matches[j];
      MatchupResult& r = results[owner[j]];
      const int seat = std::max(r.matchup.model_seat, 0);
      const double payoff = seat_return(m, seat);
      ++r.games;
      if (!r.cooperative) (payoff > 0 ? r.wins : payoff < 0 ? r.losses : r.draws)++;
      if (m.invalid_seat >= 0) ++r.forfeits;  // only the model's seats answer in text
      for (const Seat& st : m.seats) {
        if (st.row < 0) continue;
        r.answers += int(st.answers.size());
        for (const auto& [begin, end] : st.answers) r.answer_tokens += end - begin;
      }
      const double before = r.mean_payoff;  // Welford
      r.mean_payoff += (payoff - before) / r.games;
      sum_squares[owner[j]] += (payoff - before) * (payoff - r.mean_payoff);
    }
    if (progress) progress(first + count, total);
  }
  for (size_t i = 0; i < results.size(); ++i)
    results[i].payoff_sd = results[i].games > 1 ? std::sqrt(sum_squares[i] / (results[i].games - 1)) : 0.0;
  return results;
}

}  // namespace crossmoe::games
