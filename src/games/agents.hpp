#pragma once
// Players: random, MCTS (perfect-information games), a fixed policy (CFR solutions), and text
// agents that answer the protocol's prompts (a human at the terminal, or a language model).
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "games/cfr.hpp"
#include "games/game.hpp"

namespace crossmoe::games {

using Rng = std::mt19937_64;

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

// UCT with random rollouts; takes an immediately winning move when there is one.
class MctsAgent : public Agent {
 public:
  explicit MctsAgent(int simulations = 1000, double uct_c = 2.0) : simulations_(simulations), uct_c_(uct_c) {}
  int act(const Game&, const State& state, Rng& rng) override;
  std::string name() const override { return "mcts"; }

 private:
  int simulations_;
  double uct_c_;
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

// Asks `respond` with the protocol prompt and parses its answer.
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
