// A CFR policy file, as `games play --p0 cfr:FILE` reads it: the reader, then the policy played
// the way PolicyAgent plays it, through every decision of Kuhn poker (its exploitability) or of
// random Leduc deals.
#include <random>
#include <vector>

#include "fuzz_harness.hpp"
#include "games/cfr.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  using namespace crossmoe;
  using namespace crossmoe::games;
  const bool leduc = bytes.find("\"leduc_poker\"") != std::string::npos;
  const auto game = make_game(leduc ? "leduc_poker" : "kuhn_poker");
  const Policy policy = parse_policy(bytes, *game, "policy.json");
  if (!leduc) {
    const double e = exploitability(*game, policy);
    fuzz::check(e > -1e-9 && e < 3, "exploitability outside [0, the game's range]");
    return;
  }
  std::mt19937_64 rng(1);
  for (int deal = 0; deal < 20; ++deal) {
    auto s = game->initial_state();
    while (!s->is_terminal()) {
      const auto moves = s->is_chance() ? s->chance_outcomes() : policy_at(policy, *s);
      std::vector<double> p;
      for (const auto& m : moves) p.push_back(m.second);
      s->apply(moves[std::discrete_distribution<size_t>(p.begin(), p.end())(rng)].first);
    }
  }
}
