#include "runtime/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>

#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

SamplingParams generation_defaults(const std::filesystem::path& model_dir) {
  SamplingParams p;
  const auto path = model_dir / "generation_config.json";
  if (!std::filesystem::exists(path)) return p;
  const nlohmann::json g = read_json_file(path);
  if (!g.is_object() || !g.value("do_sample", false)) return p;
  // The file is untrusted: a value outside its field's type is an error, not a cast's undefined result.
  const auto number = [&](const char* key, double fallback, double max) {
    if (!g.contains(key) || !g[key].is_number()) return fallback;
    const double v = g[key].get<double>();
    require(std::isfinite(v) && std::fabs(v) <= max,
            path.string() + ": '" + key + "' must be a number of at most " + std::to_string(max));
    return v;
  };
  constexpr double kFloatMax = 3.4e38;
  p.temperature = float(number("temperature", 1.0, kFloatMax));
  p.top_k = int(number("top_k", 50, INT32_MAX));
  p.top_p = float(number("top_p", 1.0, kFloatMax));
  p.min_p = float(number("min_p", 0.0, kFloatMax));
  p.repetition_penalty = float(number("repetition_penalty", 1.0, kFloatMax));
  return p;
}

Sampler::Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) {
  require(params.temperature >= 0, "temperature must not be negative");
  require(params.top_k >= 0, "top-k must not be negative");
  require(params.top_p > 0 && params.top_p <= 1, "top-p must be in (0, 1]");
  require(params.min_p >= 0 && params.min_p < 1, "min-p must be in [0, 1)");
  require(params.repetition_penalty > 0, "repetition penalty must be positive");
  require(std::fabs(params.presence_penalty) <= 2 && std::fabs(params.frequency_penalty) <= 2,
          "presence and frequency penalties must be in [-2, 2]");
}

std::vector<float> Sampler::distribution(const float* logits, int vocab, const std::vector<int>& history) const {
  std::vector<float> z(logits, logits + vocab);
  if (p_.repetition_penalty != 1.0f) {
    // Once per distinct token, as transformers does (gather, penalise, scatter).
    std::vector<char> seen(vocab, 0);
    for (int t : history)
      if (t >= 0 && t < vocab && !seen[t]) {
        seen[t] = 1;
        z[t] = z[t] > 0 ? z[t] / p_.repetition_penalty : z[t] * p_.repetition_penalty;
      }
  }
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) {
    std::vector<int> count(vocab, 0);
    for (int t : history)
      if (t >= 0 && t < vocab) ++count[t];
    for (int t = 0; t < vocab; ++t)
      if (count[t] > 0) z[t] -= p_.presence_penalty + p_.frequency_penalty * float(count[t]);
  }
  std::vector<float> prob(vocab, 0.0f);
  if (p_.temperature == 0.0f) {
    prob[std::max_element(z.begin(), z.end()) - z.begin()] = 1.0f;
    return prob;
  }
  for (float& v : z) v /= p_.temperature;
  std::vector<int> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
  int keep = vocab;
  if (p_.top_k > 0) keep = std::min(keep, p_.top_k);
  const float m = z[order[0]];
  double total = 0.0;
  for (int i = 0; i < keep; ++i) total += std::exp(double(z[order[i]] - m));
  if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double mass = 0.0;
    for (int i = 0; i < keep; ++i) {
      mass += std::exp(double(z[order[i]] - m)) / total;
      if (mass >= p_.top_p) { keep = i + 1; break; }
    }
  }
  if (p_.min_p > 0.0f) {  // drop tokens below min_p times the top probability
    int n = 1;
    while (n < keep && std::exp(double(z[order[n]] - m)) >= p_.min_p) ++n;
    keep = n;
  }
  double kept = 0.0;
  for (int i = 0; i < keep; ++i) kept += std::exp(double(z[order[i]] - m));
  for (int i = 0; i < keep; ++i) prob[order[i]] = float(std::exp(double(z[order[i]] - m)) / kept);
  return prob;
}

int Sampler::sample(const float* logits, int vocab, const std::vector<int>& history) {
  const std::vector<float> prob = distribution(logits, vocab, history);
  if (p_.temperature == 0.0f) return int(std::max_element(prob.begin(), prob.end()) - prob.begin());
  std::discrete_distribution<int> draw(prob.begin(), prob.end());
  return draw(rng_);
}

}  // namespace crossmoe
