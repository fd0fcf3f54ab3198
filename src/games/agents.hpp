#pragma once
// Players: random, MCTS (perfect-information games), a fixed policy (CFR solutions, the Leduc
// Nash equilibrium), and text agents that answer the protocol's prompts (a language model).
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "games/cfr.hpp"
#include "games/game.hpp"

namespace crossmoe::games {

using Rng = std::mt19937_64;

// One of `weighted` (action, probability) pairs, drawn by probability.
int draw_action(const std::vector<std::pair<int, double>>& weighted, Rng& rng);
// Applies a chance outcome of `state` drawn by its probability.
void apply_chance_outcome(State& state, Rng& rng);

class Agent {
 public:
  virtual ~Agent() = default;
  // The action to take at `state` (the agent's turn), or -1 for an invalid answer.
  virtual int act(const Game& game, const State& state, Rng& rng) = 0;
  virtual std::string name() const = 0;
};

class RandomAgent : public Agent {
 public:
  int act(const Game&, const State& state, Rng& rng) override;
  std::string name() const override { return "random"; }
};

// OpenSpiel's MCTSBot as MARS configures it (uct_c 2.0, 100 or 1000 simulations, a
// RandomRolloutEvaluator of 10 rollouts, solve=False): each simulation descends by UCT (an
// unvisited child first; a terminal child is worth its outcome), expands a node the second
// time it is reached with its children in random order, evaluates the leaf by the mean return
// of `rollouts` random playouts (or its outcome when terminal) and backs the value up to every
// node for the player who moved into it. The move is the child with a winning outcome, else
// the most visited, else the highest total.
struct MctsOptions {
  double uct_c = 2.0;
  int simulations = 100;
  int rollouts = 10;
};
// Throws Error naming the flag when an option is out of range (simulations >= 2, rollouts >= 1,
// uct_c >= 0 and finite).
void validate(const MctsOptions& options);

class MctsAgent : public Agent {
 public:
  explicit MctsAgent(MctsOptions options = {});
  int act(const Game&, const State& state, Rng& rng) override;
  std::string name() const override { return "mcts"; }

 private:
  MctsOptions options_;
};

class PolicyAgent : public Agent {
 public:
  PolicyAgent(Policy policy, std::string name) : policy_(std::move(policy)), name_(std::move(name)) {}
  int act(const Game&, const State& state, Rng& rng) override;
  std::string name() const override { return name_; }

 private:
  Policy policy_;
  std::string name_;
};

// Asks `respond` with the protocol prompt and parses its answer (protocol.hpp).
class TextAgent : public Agent {
 public:
  TextAgent(std::function<std::string(const std::string& prompt)> respond, std::string name)
      : respond_(std::move(respond)), name_(std::move(name)) {}
  int act(const Game& game, const State& state, Rng& rng) override;
  std::string name() const override { return name_; }
  const std::string& last_error() const { return last_error_; }

 private:
  std::function<std::string(const std::string&)> respond_;
  std::string name_, last_error_;
};

// A rule-based Hanabi partner (see hanabi.cpp): plays known-playable cards, hints playable
// cards to partners, discards the oldest card otherwise.
std::unique_ptr<Agent> make_hanabi_partner();

}  // namespace crossmoe::games
