// crossmoe's side of bench/openspiel_compare.sh, also useful alone: random-play steps per second
// for every game, CFR and CFR+ iterations per second (with the exploitability reached after a
// fixed number of iterations, which OpenSpiel's solvers must match), and MCTS simulations per
// second. Prints "row<TAB>value<TAB>unit" lines whose names, game strings and loops mirror
// bench/openspiel_games_driver.cpp. Usage: bench_games [seconds per measurement]
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>

#include "games/agents.hpp"
#include "games/cfr.hpp"
#include "games/game.hpp"

using namespace crossmoe;
using namespace crossmoe::games;

namespace {

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

// Random play to the end of each episode: chance outcomes sampled by their probabilities (as
// OpenSpiel's SampleAction walks the cumulative distribution), players' actions uniformly among
// the legal ones, the returns read at the end.
void random_play(const std::string& label, const std::string& game_string, double budget) {
  const auto game = make_game(game_string);
  std::mt19937_64 rng(0);
  long steps = 0, episodes = 0;
  double sum = 0;
  CpuStopwatch watch;
  // The CPU clock is a system call: read it every 64 episodes, not after each short game.
  while (episodes++ % 64 != 0 || watch.seconds() < budget) {
    auto state = game->initial_state();
    while (!state->is_terminal()) {
      if (state->is_chance()) {
        const auto outcomes = state->chance_outcomes();
        double z = std::uniform_real_distribution<double>(0, 1)(rng);
        size_t pick = 0;
        while (pick + 1 < outcomes.size() && (z -= outcomes[pick].second) >= 0) ++pick;
        state->apply(outcomes[pick].first);
      } else {
        const auto legal = state->legal_actions();
        state->apply(legal[std::uniform_int_distribution<size_t>(0, legal.size() - 1)(rng)]);
      }
      ++steps;
    }
    sum += state->returns()[0];
  }
  const double seconds = watch.seconds();
  if (sum == 1e300) std::printf("#");  // keeps the returns observable
  row("random " + label, steps / seconds, "steps/s");
}

void cfr(const std::string& label, CfrSolver::Variant variant, const std::string& game_name, double budget,
         int check_iterations) {
  const auto game = make_game(game_name);
  {
    CfrSolver solver(*game, variant);
    CpuStopwatch watch;
    while (watch.seconds() < budget) solver.iterate(1);
    row(label + " " + game_name, solver.iterations() / watch.seconds(), "iterations/s");
  }
  CfrSolver solver(*game, variant);
  solver.iterate(check_iterations);
  row(label + " " + game_name + " exploitability@" + std::to_string(check_iterations),
      exploitability(*game, solver.average_policy()), "check");
}

// Searches from the initial state, as MARS's MCTS opponent searches, counting simulations.
void mcts(const std::string& game_name, double budget, int simulations, double uct_c, int rollouts) {
  const auto game = make_game(game_name);
  MctsAgent agent({uct_c, simulations, rollouts});
  Rng rng(0);
  const auto root = game->initial_state();
  long searches = 0;
  CpuStopwatch watch;
  while (watch.seconds() < budget) {
    agent.act(*game, *root, rng);
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
  cfr("cfr", CfrSolver::Variant::Cfr, "kuhn_poker", budget, 100);
  cfr("cfr+", CfrSolver::Variant::CfrPlus, "kuhn_poker", budget, 100);
  cfr("cfr", CfrSolver::Variant::Cfr, "leduc_poker", budget, 20);
  cfr("cfr+", CfrSolver::Variant::CfrPlus, "leduc_poker", budget, 20);
  for (const char* game : {"tic_tac_toe", "connect_four"}) mcts(game, budget, 1000, 2.0, 10);
}
