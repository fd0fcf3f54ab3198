#include "games/agents.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "games/protocol.hpp"

namespace crossmoe::games {

int RandomAgent::act(const Game&, const State& state, Rng& rng) {
  const auto legal = state.legal_actions();
  return legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)];
}

int PolicyAgent::act(const Game&, const State& state, Rng& rng) {
  const auto moves = policy_at(policy_, state);
  std::vector<double> p;
  for (const auto& m : moves) p.push_back(m.second);
  return moves[std::discrete_distribution<size_t>(p.begin(), p.end())(rng)].first;
}

int TextAgent::act(const Game& game, const State& state, Rng&) {
  const ParsedAnswer answer = parse_answer(respond_(turn_prompt(game.info(), state)), state);
  last_error_ = answer.error;
  return answer.action;
}

namespace {

void play_out(State& s, Rng& rng) {  // random moves (and chance) to the end
  while (!s.is_terminal()) {
    if (s.is_chance()) {
      const auto outcomes = s.chance_outcomes();
      std::vector<double> p;
      for (const auto& o : outcomes) p.push_back(o.second);
      s.apply(outcomes[std::discrete_distribution<size_t>(p.begin(), p.end())(rng)].first);
    } else {
      const auto legal = s.legal_actions();
      s.apply(legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)]);
    }
  }
}

struct TreeNode {
  int action = -1;
  int mover = -1;  // the player who took `action` to get here
  double total = 0;
  int visits = 0;
  std::vector<TreeNode> children;
  bool expanded = false;
};

}  // namespace

int MctsAgent::act(const Game&, const State& root, Rng& rng) {
  const int me = root.current_player();
  const auto legal = root.legal_actions();
  for (int a : legal) {  // a move that wins at once needs no search
    auto s = root.clone();
    s->apply(a);
    if (s->is_terminal() && s->returns()[size_t(me)] > 0) return a;
  }
  TreeNode tree;
  for (int sim = 0; sim < simulations_; ++sim) {
    auto s = root.clone();
    std::vector<TreeNode*> path = {&tree};
    TreeNode* node = &tree;
    while (!s->is_terminal()) {
      if (s->is_chance()) {  // sample chance; the tree does not branch on it
        play_out(*s, rng);
        break;
      }
      if (!node->expanded) {
        node->expanded = true;
        for (int a : s->legal_actions()) node->children.push_back({a, s->current_player(), 0, 0, {}, false});
        std::shuffle(node->children.begin(), node->children.end(), rng);
      }
      TreeNode* best = nullptr;
      double best_score = -std::numeric_limits<double>::infinity();
      for (TreeNode& c : node->children) {
        const double score = c.visits == 0 ? std::numeric_limits<double>::infinity()
                                           : c.total / c.visits + uct_c_ * std::sqrt(std::log(double(node->visits)) / c.visits);
        if (score > best_score) best_score = score, best = &c;
      }
      s->apply(best->action);
      node = best;
      path.push_back(node);
      if (node->visits == 0) break;  // a new leaf: evaluate it by a rollout
    }
    play_out(*s, rng);
    const auto returns = s->returns();
    for (TreeNode* n : path) {
      ++n->visits;
      if (n->mover >= 0) n->total += returns[size_t(n->mover)];
    }
  }
  const TreeNode* best = &tree.children.front();
  for (const TreeNode& c : tree.children)
    if (c.visits > best->visits) best = &c;
  return best->action;
}

}  // namespace crossmoe::games
