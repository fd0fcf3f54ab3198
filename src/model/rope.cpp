#include "model/rope.hpp"

#include <algorithm>
#include <cmath>

namespace crossmoe {

namespace {

std::vector<float> base_inv_freq(double theta, int dim) {
  std::vector<float> f(dim / 2);
  for (int i = 0; i < dim / 2; ++i) f[i] = float(1.0 / std::pow(theta, double(2 * i) / dim));
  return f;
}

void apply_llama3(const RopeConfig& r, std::vector<float>& inv_freq) {
  const double old_len = r.original_max_position_embeddings;
  const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
  for (float& f : inv_freq) {
    const double wavelen = 2 * M_PI / f;
    if (wavelen < high_wavelen) continue;             // high frequency: unchanged
    if (wavelen > low_wavelen) { f = float(f / r.factor); continue; }  // low: interpolated
    const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    f = float((1 - smooth) * f / r.factor + smooth * f);
  }
}

// YaRN: interpolate low frequencies, keep high ones, ramp between; returns the attention factor.
float apply_yarn(const RopeConfig& r, int dim, std::vector<float>& inv_freq) {
  const double factor = r.factor;
  const auto correction_dim = [&](double rotations) {
    return dim * std::log(r.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(r.theta));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;
  for (int i = 0; i < dim / 2; ++i) {
    const float pos_freq = float(std::pow(r.theta, double(2 * i) / dim));
    const float extrapolation = 1.0f / pos_freq, interpolation = 1.0f / float(factor * pos_freq);
    const float ramp = std::clamp(float((i - low) / (high - low)), 0.0f, 1.0f);
    const float keep = 1.0f - ramp;
    inv_freq[i] = interpolation * (1.0f - keep) + extrapolation * keep;
  }
  if (r.attention_factor > 0) return float(r.attention_factor);
  return factor <= 1 ? 1.0f : float(0.1 * std::log(factor) + 1.0);
}

}  // namespace

RopeTable::RopeTable(const RopeConfig& rope, int head_dim, int max_position_embeddings)
    : rope_(rope), dim_(head_dim), max_positions_(max_position_embeddings),
      inv_freq_(base_inv_freq(rope.theta, head_dim)) {
  switch (rope.type) {
    case RopeType::Linear:
      for (float& f : inv_freq_) f = float(f / rope.factor);
      break;
    case RopeType::Llama3: apply_llama3(rope, inv_freq_); break;
    case RopeType::Yarn: attention_factor_ = apply_yarn(rope, head_dim, inv_freq_); break;
    default: break;
  }
  for (size_t i = 0; i < rope.freq_factors.size() && i < inv_freq_.size(); ++i) inv_freq_[i] /= rope.freq_factors[i];
}

std::vector<float> RopeTable::dynamic_inv_freq(int sequence_length) const {
  const int original = rope_.original_max_position_embeddings > 0 ? rope_.original_max_position_embeddings
                                                                  : max_positions_;
  if (sequence_length <= original) return inv_freq_;
  const double base = rope_.theta * std::pow(rope_.factor * sequence_length / original - (rope_.factor - 1),
                                             double(dim_) / (dim_ - 2));
  return base_inv_freq(base, dim_);
}

void RopeTable::at(int position, int sequence_length, float* cos, float* sin) const {
  const std::vector<float> dynamic =
      rope_.type == RopeType::Dynamic ? dynamic_inv_freq(sequence_length) : std::vector<float>();
  const std::vector<float>& f = rope_.type == RopeType::Dynamic ? dynamic : inv_freq_;
  for (int i = 0; i < dim_ / 2; ++i) {
    const float angle = float(position) * f[i];  // float32 like the reference
    cos[i] = float(std::cos(double(angle))) * attention_factor_;
    sin[i] = float(std::sin(double(angle))) * attention_factor_;
  }
}

}  // namespace crossmoe
