#include "games/agents.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "games/protocol.hpp"
#include "util/error.hpp"

namespace crossmoe::games {

int draw_action(const std::vector<std::pair<int, double>>& weighted, Rng& rng) {
  std::vector<double> p;
  for (const auto& w : weighted) p.push_back(w.second);
  return weighted[std::discrete_distribution<size_t>(p.begin(), p.end())(rng)].first;
}

void apply_chance_outcome(State& state, Rng& rng) { state.apply(draw_action(state.chance_outcomes(), rng)); }

int RandomAgent::act(const Game&, const State& state, Rng& rng) {
  const auto legal = state.legal_actions();
  return legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)];
}

int PolicyAgent::act(const Game&, const State& state, Rng& rng) {
  return draw_action(policy_at(policy_, state), rng);
}

int TextAgent::act(const Game& game, const State& state, Rng&) {
  const ParsedAnswer answer = parse_answer(respond_(turn_prompt(game, state)), game, state);
  last_error_ = answer.error;
  return answer.action;
}

void validate(const MctsOptions& o) {
  // The first simulation evaluates the root itself; its moves are expanded by the second.
  require(o.simulations >= 2, "--mcts-simulations must be at least 2, got " + std::to_string(o.simulations));
  require(o.rollouts >= 1, "--mcts-rollouts must be at least 1, got " + std::to_string(o.rollouts));
  require(std::isfinite(o.uct_c) && o.uct_c >= 0, "--mcts-uct-c must be a finite number >= 0");
}

MctsAgent::MctsAgent(MctsOptions options) : options_(options) { validate(options_); }

namespace {

int sample(const std::vector<std::pair<int, double>>& outcomes, Rng& rng) {
  double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  for (const auto& [action, p] : outcomes) {
    if (u < p) return action;
    u -= p;
  }
  return outcomes.back().first;
}

// Random play (chance by its probabilities) to the end: the returns.
std::vector<double> rollout(const State& from, Rng& rng) {
  auto s = from.clone();
  while (!s->is_terminal()) {
    if (s->is_chance()) {
      s->apply(sample(s->chance_outcomes(), rng));
    } else {
      const auto legal = s->legal_actions();
      s->apply(legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)]);
    }
  }
  return s->returns();
}

struct SearchNode {
  int action = -1;
  int player = 0;        // who took `action` (kChancePlayer for a chance outcome)
  int explore_count = 0;
  double total_reward = 0;
  bool has_outcome = false;
  double outcome = 0;    // the mover's return, once this node was found terminal
  int first_child = -1, num_children = 0;
};

}  // namespace

int MctsAgent::act(const Game&, const State& root_state, Rng& rng) {
  require(!root_state.is_chance() && !root_state.is_terminal(), "mcts: not a player's turn");
  std::vector<SearchNode> nodes;  // children of a node are contiguous
  nodes.push_back({-1, root_state.current_player()});
  std::vector<int> path;
  std::vector<std::pair<int, double>> priors;
  for (int sim = 0; sim < options_.simulations; ++sim) {
    auto s = root_state.clone();
    path.assign(1, 0);
    int cur = 0;
    while (!s->is_terminal() && nodes[size_t(cur)].explore_count > 0) {
      if (nodes[size_t(cur)].num_children == 0) {  // expand, children in random order
        if (s->is_chance()) {
          priors = s->chance_outcomes();
        } else {
          priors.clear();
          for (int a : s->legal_actions()) priors.push_back({a, 0.0});
        }
        std::shuffle(priors.begin(), priors.end(), rng);
        const int mover = s->current_player();
        nodes[size_t(cur)].first_child = int(nodes.size());
        nodes[size_t(cur)].num_children = int(priors.size());
        for (const auto& [a, p] : priors) nodes.push_back({a, mover});
      }
      const SearchNode& node = nodes[size_t(cur)];
      int chosen = -1;
      if (s->is_chance()) {
        const int action = sample(s->chance_outcomes(), rng);
        for (int c = node.first_child; c < node.first_child + node.num_children; ++c)
          if (nodes[size_t(c)].action == action) chosen = c;
      } else {
        double best = -std::numeric_limits<double>::infinity();
        const double log_parent = std::log(double(node.explore_count));
        for (int c = node.first_child; c < node.first_child + node.num_children; ++c) {
          const SearchNode& child = nodes[size_t(c)];
          const double value = child.has_outcome ? child.outcome
                               : child.explore_count == 0
                                   ? std::numeric_limits<double>::infinity()
                                   : child.total_reward / child.explore_count +
                                         options_.uct_c * std::sqrt(log_parent / child.explore_count);
          if (value > best) best = value, chosen = c;  // the first of equals, as Python's max
        }
      }
      s->apply(nodes[size_t(chosen)].action);
      cur = chosen;
      path.push_back(cur);
    }
    std::vector<double> returns;
    if (s->is_terminal()) {
      returns = s->returns();
      SearchNode& leaf = nodes[size_t(cur)];
      if (leaf.player >= 0) leaf.has_outcome = true, leaf.outcome = returns[size_t(leaf.player)];
    } else {
      returns.assign(size_t(s->num_players()), 0.0);
      for (int r = 0; r < options_.rollouts; ++r) {
        const auto v = rollout(*s, rng);
        for (size_t p = 0; p < returns.size(); ++p) returns[p] += v[p];
      }
      for (double& v : returns) v /= options_.rollouts;
    }
    // Each node is credited with the return of the player who moved into it; a chance node
    // with that of the nearest player above it.
    for (size_t i = path.size(); i-- > 0;) {
      size_t decider = i;
      while (nodes[size_t(path[decider])].player == kChancePlayer) --decider;
      SearchNode& node = nodes[size_t(path[i])];
      node.total_reward += returns[size_t(nodes[size_t(path[decider])].player)];
      ++node.explore_count;
    }
  }
  // OpenSpiel's sort key: (outcome, explore count, total reward), the first of equals.
  const SearchNode& root = nodes[0];
  int best = root.first_child;
  const auto key = [&](int c) {
    const SearchNode& n = nodes[size_t(c)];
    return std::tuple<double, int, double>(n.has_outcome ? n.outcome : 0.0, n.explore_count, n.total_reward);
  };
  for (int c = root.first_child + 1; c < root.first_child + root.num_children; ++c)
    if (key(c) > key(best)) best = c;
  return nodes[size_t(best)].action;
}

}  // namespace crossmoe::games
