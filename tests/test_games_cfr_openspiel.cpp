// CFR and CFR+ against OpenSpiel's own solvers: the exploitability of the average policy after a
// fixed number of iterations, as OpenSpiel's CFRSolver / CFRPlusSolver and its
// algorithms::Exploitability computed it on the same games (commit 112b7770, run by
// bench/openspiel_compare.sh, whose "exploitability@N" rows print both sides). The two
// variants reach different values, so each one's update rules are checked, not only convergence.
#include <gtest/gtest.h>

#include "games/cfr.hpp"

using namespace crossmoe::games;

namespace {

double exploitability_after(const std::string& game_name, CfrSolver::Variant variant, int iterations) {
  const auto game = make_game(game_name);
  CfrSolver solver(*game, variant);
  solver.iterate(iterations);
  return exploitability(*game, solver.average_policy());
}

}  // namespace

TEST(CfrAgainstOpenSpiel, KuhnPoker) {
  EXPECT_NEAR(exploitability_after("kuhn_poker", CfrSolver::Variant::Cfr, 100), 0.00822597731592, 1e-12);
  EXPECT_NEAR(exploitability_after("kuhn_poker", CfrSolver::Variant::CfrPlus, 100), 0.00119440410111, 1e-12);
}

TEST(CfrAgainstOpenSpiel, LeducPoker) {
  EXPECT_NEAR(exploitability_after("leduc_poker", CfrSolver::Variant::Cfr, 20), 0.453145653416, 1e-11);
  EXPECT_NEAR(exploitability_after("leduc_poker", CfrSolver::Variant::CfrPlus, 20), 0.173655373442, 1e-11);
}
