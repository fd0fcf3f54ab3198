// OpenSpiel's side of bench/openspiel_compare.sh: the rows of `bench_games --rows`, measured on
// OpenSpiel's own games and algorithms through its public C++ API. Built only by that script,
// against an OpenSpiel checkout outside this repository. Usage: openspiel_games_driver [seconds]
// Prints "row<TAB>value<TAB>unit" lines; the row names, game strings, parameters and loops
// mirror bench/bench_games.cpp, so that each pair of rows measures the same work.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <string>

#include "open_spiel/algorithms/cfr.h"
#include "open_spiel/algorithms/mcts.h"
#include "open_spiel/algorithms/tabular_exploitability.h"
#include "open_spiel/spiel.h"

namespace {

namespace alg = open_spiel::algorithms;

// Seconds of this process's CPU time, not of the wall clock: the machine is shared, and time
// spent descheduled would otherwise count against whichever side ran then.
class CpuStopwatch {
 public:
  double seconds() const { return now() - start_; }

 private:
  static double now() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  }
  double start_ = now();
};

void row(const std::string& name, double value, const char* unit) {
  std::printf("%s\t%.12g\t%s\n", name.c_str(), value, unit);
}

// Random play to the end of each episode: chance outcomes sampled by their probabilities,
// players' actions uniformly among the legal ones, the returns read at the end.
void random_play(const std::string& label, const std::string& game_string, double budget) {
  const auto game = open_spiel::LoadGame(game_string);
  std::mt19937_64 rng(0);
  long steps = 0, episodes = 0;
  double sum = 0;
  CpuStopwatch watch;
  // The CPU clock is a system call: read it every 64 episodes, not after each short game.
  while (episodes++ % 64 != 0 || watch.seconds() < budget) {
    auto state = game->NewInitialState();
    while (!state->IsTerminal()) {
      if (state->IsChanceNode()) {
        const auto outcomes = state->ChanceOutcomes();
        state->ApplyAction(open_spiel::SampleAction(outcomes, std::uniform_real_distribution<double>(0, 1)(rng)).first);
      } else {
        const auto legal = state->LegalActions();
        state->ApplyAction(legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)]);
      }
      ++steps;
    }
    sum += state->Returns()[0];
  }
  const double seconds = watch.seconds();
  if (sum == 1e300) std::printf("#");  // keeps the returns observable
  row("random " + label, steps / seconds, "steps/s");
}

template <class Solver>
void cfr(const std::string& label, const std::string& game_name, double budget, int check_iterations) {
  const auto game = open_spiel::LoadGame(game_name);
  {
    Solver solver(*game);
    long iterations = 0;
    CpuStopwatch watch;
    while (watch.seconds() < budget) {
      solver.EvaluateAndUpdatePolicy();
      ++iterations;
    }
    row(label + " " + game_name, iterations / watch.seconds(), "iterations/s");
  }
  Solver solver(*game);
  for (int i = 0; i < check_iterations; ++i) solver.EvaluateAndUpdatePolicy();
  row(label + " " + game_name + " exploitability@" + std::to_string(check_iterations),
      alg::Exploitability(*game, *solver.AveragePolicy()), "check");
}

// Searches from the initial state, as MARS's MCTS opponent searches (UCT, random-rollout
// evaluator, no solver), counting simulations per second.
void mcts(const std::string& game_name, double budget, int simulations, double uct_c, int rollouts) {
  const auto game = open_spiel::LoadGame(game_name);
  auto evaluator = std::make_shared<alg::RandomRolloutEvaluator>(rollouts, 0);
  alg::MCTSBot bot(*game, evaluator, uct_c, simulations, /*max_memory_mb=*/1 << 20, /*solve=*/false, /*seed=*/0,
                   /*verbose=*/false);
  const auto root = game->NewInitialState();
  long searches = 0;
  CpuStopwatch watch;
  while (watch.seconds() < budget) {
    bot.MCTSearch(*root);
    ++searches;
  }
  row("mcts " + game_name + " sims=" + std::to_string(simulations) + " rollouts=" + std::to_string(rollouts),
      double(searches) * simulations / watch.seconds(), "simulations/s");
}

}  // namespace

int main(int argc, char** argv) {
  const double budget = argc > 1 ? std::atof(argv[1]) : 1.0;
  random_play("tic_tac_toe", "tic_tac_toe", budget);
  random_play("connect_four", "connect_four", budget);
  random_play("kuhn_poker", "kuhn_poker", budget);
  random_play("leduc_poker", "leduc_poker", budget);
  random_play("hanabi", "hanabi(players=2,colors=5,ranks=5,hand_size=5,max_information_tokens=8,max_life_tokens=3)",
              budget);
  cfr<alg::CFRSolver>("cfr", "kuhn_poker", budget, 100);
  cfr<alg::CFRPlusSolver>("cfr+", "kuhn_poker", budget, 100);
  cfr<alg::CFRSolver>("cfr", "leduc_poker", budget, 20);
  cfr<alg::CFRPlusSolver>("cfr+", "leduc_poker", budget, 20);
  for (const char* game : {"tic_tac_toe", "connect_four"}) mcts(game, budget, 1000, 2.0, 10);
}
