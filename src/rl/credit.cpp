#include "rl/credit.hpp"

#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "util/error.hpp"

namespace crossmoe::rl {

namespace {

struct Moments {
  double mean = 0, std = 0;  // std unbiased; 0 with fewer than two values
};

Moments moments(const std::vector<double>& xs) {
  Moments m;
  if (xs.empty()) return m;
  for (double x : xs) m.mean += x;
  m.mean /= double(xs.size());
  if (xs.size() < 2) return m;
  double ss = 0;
  for (double x : xs) ss += (x - m.mean) * (x - m.mean);
  m.std = std::sqrt(ss / double(xs.size() - 1));
  return m;
}

// score_normalize: centre, or standardise (zero when the spread is below 1e-6).
double normalize(double x, const Moments& m, Normalization how) {
  switch (how) {
    case Normalization::None: return x;
    case Normalization::Mean: return x - m.mean;
    case Normalization::MeanStd: return m.std > 1e-6 ? (x - m.mean) / (m.std + 1e-6) : 0.0;
  }
  return x;
}

// masked_whiten over the model's tokens of every trajectory, then masked (as compute_advantage).
void whiten(std::vector<std::vector<double>>& values, const std::vector<SeatTrajectory>& batch) {
  std::vector<double> on;
  for (size_t b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch[b].positions; ++i)
      if (batch[b].response[size_t(i)]) on.push_back(values[b][size_t(i)]);
  if (on.size() < 2) return;  // MARS refuses a single token (division by zero); leave it as it is
  const Moments m = moments(on);
  const double scale = 1.0 / std::sqrt(m.std * m.std + 1e-8);
  for (size_t b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch[b].positions; ++i)
      values[b][size_t(i)] = batch[b].response[size_t(i)] ? (values[b][size_t(i)] - m.mean) * scale : 0.0;
}

void check(const SeatTrajectory& t, size_t index) {
  const std::string where = "trajectory " + std::to_string(index) + " (" + t.game + ", seat " + std::to_string(t.seat) + ")";
  require(t.positions >= 0 && t.response.size() == size_t(t.positions), where + ": response mask size differs from positions");
  require(!t.turn_end.empty() && t.turn_end.size() == t.turn_reward.size(), where + ": needs one reward per own turn");
  for (size_t k = 0; k < t.turn_end.size(); ++k) {
    const int p = t.turn_end[k];
    require(p >= 0 && p < t.positions && t.response[size_t(p)], where + ": a turn end is not one of the model's tokens");
    require(k == 0 || p > t.turn_end[k - 1], where + ": turn ends are not ascending");
  }
}

}  // namespace

Credit assign_credit(const std::vector<SeatTrajectory>& batch, const CreditOptions& o) {
  for (size_t b = 0; b < batch.size(); ++b) check(batch[b], b);
  Credit credit;
  std::vector<std::vector<double>> rewards(batch.size());
  for (size_t b = 0; b < batch.size(); ++b) rewards[b].assign(size_t(batch[b].positions), 0.0);

  // 1. Rewards, normalised per game (and seat): each turn's, or each episode's sum.
  auto group_of = [&](const SeatTrajectory& t) { return std::make_pair(t.game, o.per_seat ? t.seat : 0); };
  std::map<std::pair<std::string, int>, std::vector<double>> groups;
  auto episode = [](const SeatTrajectory& t) {
    double sum = 0;
    for (double r : t.turn_reward) sum += r;
    return sum;
  };
  for (const auto& t : batch) {
    auto& g = groups[group_of(t)];
    if (o.turn_scores) g.insert(g.end(), t.turn_reward.begin(), t.turn_reward.end());
    else g.push_back(episode(t));
  }
  std::map<std::pair<std::string, int>, Moments> stats;
  for (const auto& [key, values] : groups) stats[key] = moments(values);
  for (size_t b = 0; b < batch.size(); ++b) {
    const SeatTrajectory& t = batch[b];
    const Moments& m = stats.at(group_of(t));
    if (o.turn_scores) {
      for (size_t k = 0; k < t.turn_end.size(); ++k)
        rewards[b][size_t(t.turn_end[k])] = normalize(t.turn_reward[k], m, o.reward_norm);
    } else {
      rewards[b][size_t(t.turn_end.back())] = normalize(episode(t), m, o.reward_norm);
    }
  }

  // 2. Whitened over the model's tokens; rewards elsewhere are dropped.
  if (o.whiten_rewards) whiten(rewards, batch);
  for (size_t b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch[b].positions; ++i)
      if (!batch[b].response[size_t(i)]) rewards[b][size_t(i)] = 0.0;

  // 3. Returns: discounted reverse cumulative sums.
  credit.returns.resize(batch.size());
  for (size_t b = 0; b < batch.size(); ++b) {
    std::vector<double>& ret = credit.returns[b];
    ret.assign(rewards[b].size(), 0.0);
    double running = 0;
    for (size_t i = ret.size(); i-- > 0;) ret[i] = running = rewards[b][i] + o.gamma * running;
  }
  credit.advantages = credit.returns;

  // 4. Per seat, over the distinct values (as float32, the type MARS holds them in) of every
  //    position of the seat's sequences, plus the 0 that padding always contributes.
  if (o.advantage_norm != Normalization::None) {
    std::map<int, std::set<float>> distinct;
    for (size_t b = 0; b < batch.size(); ++b) {
      std::set<float>& d = distinct[batch[b].seat];
      d.insert(0.0f);
      for (double v : credit.advantages[b]) d.insert(float(v));
    }
    std::map<int, Moments> seat_stats;
    for (const auto& [seat, values] : distinct) {
      std::vector<double> vs;
      for (float v : values) vs.push_back(v);
      seat_stats[seat] = moments(vs);
    }
    for (size_t b = 0; b < batch.size(); ++b) {
      const int seat = batch[b].seat;
      const Moments& m = seat_stats.at(seat);
      const bool single = distinct.at(seat).size() == 1 || m.std == 0.0;
      for (double& v : credit.advantages[b]) {
        const double x = float(v);
        v = single ? 0.0 : o.advantage_norm == Normalization::Mean ? x - m.mean : (x - m.mean) / (m.std + 1e-6);
      }
    }
  }

  // 5. Whitened over the model's tokens, zero elsewhere.
  if (o.whiten_advantages) whiten(credit.advantages, batch);
  for (size_t b = 0; b < batch.size(); ++b)
    for (int i = 0; i < batch[b].positions; ++i)
      if (!batch[b].response[size_t(i)]) credit.advantages[b][size_t(i)] = 0.0;
  return credit;
}

}  // namespace crossmoe::rl
