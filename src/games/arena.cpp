#include "games/arena.hpp"

#include <algorithm>
#include <cmath>

#include "util/error.hpp"

namespace crossmoe::games {

EpisodeResult play_episode(const Game& game, const std::vector<Agent*>& agents, Rng& rng, const MarsRewards& rewards) {
  auto state = game.initial_state();
  const int n = state->num_players();
  require(int(agents.size()) == n, "this game needs " + std::to_string(n) + " players");
  EpisodeResult r;
  r.valid_turns.assign(size_t(n), 0);
  r.mars_reward.assign(size_t(n), 0.0);
  while (!state->is_terminal()) {
    if (state->is_chance()) {
      apply_chance_outcome(*state, rng);
      continue;
    }
    const int player = state->current_player();
    const int action = agents[size_t(player)]->act(game, *state, rng);
    const auto legal = state->legal_actions();
    if (std::find(legal.begin(), legal.end(), action) == legal.end()) {
      r.invalid_player = player;
      const Forfeit f = forfeit(game, *state, player, rewards);
      r.returns = f.returns;
      for (int p = 0; p < n; ++p) r.mars_reward[size_t(p)] += f.rewards[size_t(p)];
      r.final_state = std::move(state);
      return r;
    }
    ++r.valid_turns[size_t(player)];
    state->apply(action);
    const auto step = step_rewards(game, *state, rewards);
    for (int p = 0; p < n; ++p) r.mars_reward[size_t(p)] += step[size_t(p)];
  }
  r.returns = state->returns();
  r.final_state = std::move(state);
  return r;
}

Proportion wilson(int successes, int trials) {
  if (trials == 0) return {0, 0, 1};
  const double z = 1.959963984540054, n = trials, p = successes / n;
  const double denom = 1 + z * z / n;
  const double center = (p + z * z / (2 * n)) / denom;
  const double half = z * std::sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom;
  // Rounding can put an end a hair past the rate at 0 or n successes: the interval holds the rate.
  return {p, std::clamp(center - half, 0.0, p), std::clamp(center + half, p, 1.0)};
}

MatchStats play_match(const Game& game, Agent& p0, Agent& p1, int games, uint64_t seed,
                      const std::function<void(const EpisodeResult&, const MatchStats&)>& after_game) {
  MatchStats m;
  Rng rng(seed);
  for (int g = 0; g < games; ++g) {
    const EpisodeResult r = play_episode(game, {&p0, &p1}, rng);
    ++m.games;
    m.invalid += r.invalid_player >= 0;
    const double v = r.returns[0];
    (v > 0 ? m.wins : v < 0 ? m.losses : m.draws)++;
    const double before = m.mean_return;
    m.mean_return += (v - m.mean_return) / m.games;
    m.sum_squared_deviation += (v - before) * (v - m.mean_return);
    m.mean_mars_reward += (r.mars_reward[0] - m.mean_mars_reward) / m.games;
    if (after_game) after_game(r, m);
  }
  return m;
}

}  // namespace crossmoe::games
