#include "games/cfr.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "util/error.hpp"

namespace crossmoe::games {

namespace {

// The strategy in proportion to the positive regrets (uniform when none is positive).
void regret_matching(const std::vector<double>& regret, std::vector<double>& s) {
  s.resize(regret.size());
  double total = 0;
  for (size_t a = 0; a < regret.size(); ++a) total += (s[a] = std::max(regret[a], 0.0));
  for (double& p : s) p = total > 0 ? p / total : 1.0 / double(regret.size());
}

}  // namespace

CfrSolver::CfrSolver(const Game& game, Variant variant) : game_(game), variant_(variant) {
  require(game.info().num_players == 2 && !game.info().cooperative, "CFR here solves two-player zero-sum games");
}

void CfrSolver::iterate(int iterations) {
  for (int i = 0; i < iterations; ++i) {
    ++iteration_;
    for (int player = 0; player < 2; ++player) {
      traverse(*game_.initial_state(), player, 1.0, 1.0);
      // The strategy stays fixed for a whole traversal (an information state is reached by
      // many histories); regrets change (floored at zero in CFR+) only once it is over.
      for (auto& [key, node] : nodes_)
        for (size_t a = 0; a < node.pending.size(); ++a) {
          node.regret[a] += node.pending[a];
          if (variant_ == Variant::CfrPlus) node.regret[a] = std::max(0.0, node.regret[a]);
          node.pending[a] = 0.0;
        }
      for (auto& [key, node] : nodes_) regret_matching(node.regret, node.strategy);
    }
  }
}

double CfrSolver::traverse(const State& s, int player, double reach_player, double reach_others) {
  if (s.is_terminal()) return s.returns()[size_t(player)];
  // Reached by no player (chance never has probability 0): nothing below can change a regret
  // or an average, since every update is weighted by one of the two reaches. OpenSpiel prunes
  // the same way.
  if (reach_player == 0.0 && reach_others == 0.0) return 0.0;
  if (s.is_chance()) {
    double v = 0;
    for (const auto& [action, p] : s.chance_outcomes()) {
      auto child = s.clone();
      child->apply(action);
      v += p * traverse(*child, player, reach_player, reach_others * p);
    }
    return v;
  }
  const int actor = s.current_player();
  InfoNode& node = nodes_[s.information_state(actor)];
  if (node.actions.empty()) {
    node.actions = s.legal_actions();
    node.regret.assign(node.actions.size(), 0.0);
    node.strategy_sum.assign(node.actions.size(), 0.0);
    node.pending.assign(node.actions.size(), 0.0);
    regret_matching(node.regret, node.strategy);
  }
  const std::vector<double>& strategy = node.strategy;
  std::vector<double> values(node.actions.size());
  double value = 0;
  for (size_t a = 0; a < node.actions.size(); ++a) {
    auto child = s.clone();
    child->apply(node.actions[a]);
    values[a] = actor == player ? traverse(*child, player, reach_player * strategy[a], reach_others)
                                : traverse(*child, player, reach_player, reach_others * strategy[a]);
    value += strategy[a] * values[a];
  }
  if (actor == player) {  // the node map keeps `node` valid while children are inserted
    const double weight = variant_ == Variant::CfrPlus ? double(iteration_) : 1.0;
    for (size_t a = 0; a < node.actions.size(); ++a) {
      node.pending[a] += reach_others * (values[a] - value);
      node.strategy_sum[a] += weight * reach_player * strategy[a];
    }
  }
  return value;
}

Policy CfrSolver::average_policy() const {
  Policy policy;
  for (const auto& [key, node] : nodes_) {
    const double total = std::accumulate(node.strategy_sum.begin(), node.strategy_sum.end(), 0.0);
    auto& entry = policy[key];
    for (size_t a = 0; a < node.actions.size(); ++a)
      entry.push_back({node.actions[a], total > 0 ? node.strategy_sum[a] / total : 1.0 / double(node.actions.size())});
  }
  return policy;
}

std::vector<std::pair<int, double>> policy_at(const Policy& policy, const State& state) {
  auto it = policy.find(state.information_state(state.current_player()));
  if (it != policy.end()) return it->second;
  std::vector<std::pair<int, double>> uniform;
  const auto legal = state.legal_actions();
  for (int a : legal) uniform.push_back({a, 1.0 / double(legal.size())});
  return uniform;
}

std::vector<double> expected_returns(const Game& game, const Policy& policy) {
  std::function<std::vector<double>(const State&)> value = [&](const State& s) {
    if (s.is_terminal()) return s.returns();
    const auto moves = s.is_chance() ? s.chance_outcomes() : policy_at(policy, s);
    std::vector<double> v(size_t(s.num_players()), 0.0);
    for (const auto& [action, p] : moves) {
      auto child = s.clone();
      child->apply(action);
      const auto cv = value(*child);
      for (size_t k = 0; k < v.size(); ++k) v[k] += p * cv[k];
    }
    return v;
  };
  return value(*game.initial_state());
}

double best_response_value(const Game& game, const Policy& policy, int player) {
  // Each of the player's information states gathers its histories and the probability that
  // chance and the others reach them; its best action is chosen against that mixture. Perfect
  // recall makes the choices of deeper states independent of shallower ones.
  std::map<std::string, std::vector<std::pair<std::unique_ptr<State>, double>>> histories;
  std::function<void(const State&, double)> collect = [&](const State& s, double reach) {
    if (s.is_terminal() || reach == 0.0) return;
    if (!s.is_chance() && s.current_player() == player) {
      histories[s.information_state(player)].push_back({s.clone(), reach});
      for (int a : s.legal_actions()) {
        auto child = s.clone();
        child->apply(a);
        collect(*child, reach);
      }
      return;
    }
    for (const auto& [action, p] : s.is_chance() ? s.chance_outcomes() : policy_at(policy, s)) {
      auto child = s.clone();
      child->apply(action);
      collect(*child, reach * p);
    }
  };
  collect(*game.initial_state(), 1.0);

  std::map<std::string, int> choice;
  std::function<double(const State&)> value;
  std::function<int(const std::string&)> decide = [&](const std::string& key) {
    auto known = choice.find(key);
    if (known != choice.end()) return known->second;
    const auto& hs = histories.at(key);
    int best = -1;
    double best_value = -1e300;
    for (int a : hs.front().first->legal_actions()) {
      double v = 0;
      for (const auto& [h, reach] : hs) {
        auto child = h->clone();
        child->apply(a);
        v += reach * value(*child);
      }
      if (v > best_value) best_value = v, best = a;
    }
    return choice[key] = best;
  };
  value = [&](const State& s) -> double {
    if (s.is_terminal()) return s.returns()[size_t(player)];
    if (!s.is_chance() && s.current_player() == player) {
      auto child = s.clone();
      child->apply(decide(s.information_state(player)));
      return value(*child);
    }
    double v = 0;
    for (const auto& [action, p] : s.is_chance() ? s.chance_outcomes() : policy_at(policy, s)) {
      if (p == 0.0) continue;  // unreachable: its states were not collected
      auto child = s.clone();
      child->apply(action);
      v += p * value(*child);
    }
    return v;
  };
  return value(*game.initial_state());
}

double exploitability(const Game& game, const Policy& policy) {
  return (best_response_value(game, policy, 0) + best_response_value(game, policy, 1)) / 2.0;
}

}  // namespace crossmoe::games

namespace crossmoe::games {

namespace {

// Every decision state's information-state key and legal actions, walking at most `limit`
// histories: false when the tree is larger.
bool collect_information_states(const Game& game, size_t limit, std::map<std::string, std::vector<int>>* out) {
  size_t visited = 0;
  std::function<bool(const State&)> walk = [&](const State& s) {
    if (++visited > limit) return false;
    if (s.is_terminal()) return true;
    if (!s.is_chance() && out) (*out)[s.information_state(s.current_player())] = s.legal_actions();
    for (int a : s.legal_actions()) {
      auto child = s.clone();
      child->apply(a);
      if (!walk(*child)) return false;
    }
    return true;
  };
  return walk(*game.initial_state());
}

constexpr size_t kCfrHistoryLimit = 1'000'000;

}  // namespace

void require_cfr_solvable(const Game& game) {
  const GameInfo& info = game.info();
  const std::string why = "CFR solves two-player zero-sum games of imperfect information with small trees "
                          "(kuhn_poker, leduc_poker); ";
  require(info.num_players == 2 && !info.cooperative, why + info.name + " is " +
                                                          (info.cooperative ? "cooperative" : "not two-player"));
  require(!info.perfect_information, why + info.name + " is a perfect-information game: use mcts");
  require(collect_information_states(game, kCfrHistoryLimit, nullptr),
          why + info.name + " has more than " + std::to_string(kCfrHistoryLimit) + " histories");
}

void write_policy_file(const std::string& path, const Game& game, const Policy& policy) {
  // One information state per line, so that files diff well.
  std::string text = "{\"game\": " + nlohmann::json(game.info().name).dump() + ", \"policy\": {\n";
  size_t i = 0;
  for (const auto& [key, moves] : policy)
    text += nlohmann::json(key).dump() + ": " + nlohmann::json(moves).dump() + (++i < policy.size() ? ",\n" : "\n");
  text += "}}\n";
  std::ofstream out(path);
  require(out.good(), "cannot write " + path);
  out << text;
  require(out.good(), "failed writing " + path);
}

Policy parse_policy(const std::string& text, const Game& game, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw Error(source + ": not valid JSON");
  }
  const std::string name = game.info().name;
  require(j.is_object() && j.contains("policy") && j["policy"].is_object(),
          source + ": expected {\"game\": ..., \"policy\": {information state: [[action, probability], ...]}}");
  require(j.contains("game") && j["game"].is_string() && j["game"].get<std::string>() == name,
          source + " holds a policy for '" + (j.contains("game") ? j["game"].dump() : std::string("?")) + "', not " + name);
  require_cfr_solvable(game);
  std::map<std::string, std::vector<int>> states;
  collect_information_states(game, kCfrHistoryLimit, &states);
  Policy policy;
  for (const auto& [key, moves] : j["policy"].items()) {
    const std::string where = source + ": information state '" + key + "'";
    auto it = states.find(key);
    require(it != states.end(), where + " is not one of " + name + "'s");
    require(moves.is_array() && !moves.empty(), where + ": expected a non-empty list of [action, probability]");
    std::vector<std::pair<int, double>> entry;
    double total = 0;
    for (const auto& m : moves) {
      require(m.is_array() && m.size() == 2 && m[0].is_number_integer() && m[1].is_number(),
              where + ": expected [action, probability] pairs");
      const double p = m[1].get<double>();
      require(std::isfinite(p) && p >= 0, where + ": probabilities must be finite and >= 0, got " + m[1].dump());
      entry.push_back({m[0].get<int>(), p});
      total += p;
    }
    std::vector<int> actions;
    for (const auto& [a, p] : entry) actions.push_back(a);
    std::sort(actions.begin(), actions.end());
    require(actions == it->second, where + ": the moves must be exactly the legal actions there");
    require(std::abs(total - 1.0) <= 1e-4, where + ": probabilities sum to " + std::to_string(total) + ", not 1");
    for (auto& [a, p] : entry) p /= total;
    policy[key] = entry;
  }
  return policy;
}

Policy read_policy_file(const std::string& path, const Game& game) {
  std::error_code ec;
  require(std::filesystem::is_regular_file(path, ec), "policy file " + path + " does not exist or is not a regular file");
  std::ifstream in(path);
  require(in.good(), "cannot open " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_policy(text.str(), game, path);
}

extern const char kLeducPokerNashPolicy[];  // generated from data/games/leduc_poker_nash.json

Policy nash_policy(const Game& game) {
  require(game.info().name == "leduc_poker", "a Nash policy ships for leduc_poker only; for " + game.info().name +
                                                 (game.info().perfect_information ? " use mcts" : " use cfr"));
  static const Policy leduc = parse_policy(kLeducPokerNashPolicy, game, "the built-in Leduc Nash policy");
  return leduc;
}

}  // namespace crossmoe::games
