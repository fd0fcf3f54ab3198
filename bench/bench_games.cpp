// Environment steps per second (random play, one thread) for every game, and CFR+ iterations
// per second for the poker games. Usage: bench_games [seconds per measurement]
#include <cstdio>
#include <cstdlib>
#include <random>

#include "games/cfr.hpp"
#include "games/game.hpp"
#include "util/progress.hpp"

using namespace crossmoe;
using namespace crossmoe::games;

int main(int argc, char** argv) {
  const double budget = argc > 1 ? std::atof(argv[1]) : 1.0;
  std::mt19937_64 rng(0);
  std::printf("%-14s %14s %12s\n", "game", "steps/s", "episodes/s");
  for (const auto& name : game_names()) {
    const auto game = make_game(name);
    long steps = 0, episodes = 0;
    Stopwatch watch;
    while (watch.seconds() < budget) {
      auto s = game->initial_state();
      while (!s->is_terminal()) {
        if (s->is_chance()) {  // Hanabi deals kinds of card by how many are left
          const auto outcomes = s->chance_outcomes();
          double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
          size_t i = 0;
          while (i + 1 < outcomes.size() && u >= outcomes[i].second) u -= outcomes[i++].second;
          s->apply(outcomes[i].first);
        } else {
          const auto legal = s->legal_actions();
          s->apply(legal[rng() % legal.size()]);
        }
        ++steps;
      }
      ++episodes;
    }
    std::printf("%-14s %14.0f %12.0f\n", name.c_str(), steps / watch.seconds(), episodes / watch.seconds());
  }
  for (const char* name : {"kuhn_poker", "leduc_poker"}) {
    const auto game = make_game(name);
    CfrSolver solver(*game);
    Stopwatch watch;
    while (watch.seconds() < budget) solver.iterate(1);
    std::printf("%-14s %14.1f CFR+ iterations/s (full-tree traversals)\n", name, solver.iterations() / watch.seconds());
  }
}
