#include "rl/policy_loss.hpp"

namespace crossmoe::rl {

// ROLL adds 1e-8 to both counts, but to an integer mask's sum, which promotes to float32, where
// the 1e-8 vanishes: plain counts reproduce it exactly.
torch::Tensor sequence_mean(const torch::Tensor& values, const torch::Tensor& mask) {
  const torch::Tensor m = mask.to(values.scalar_type());
  const torch::Tensor count = m.sum(-1);
  const torch::Tensor per_sequence = torch::where(count > 0, (values * m).sum(-1) / count.clamp_min(1), torch::zeros_like(count));
  const torch::Tensor valid = (count > 0).to(values.scalar_type());
  return (per_sequence * valid).sum() / valid.sum().clamp_min(1);
}

PolicyLoss policy_loss(const torch::Tensor& log_probs, const torch::Tensor& old_log_probs,
                       const torch::Tensor& ref_log_probs, const torch::Tensor& advantages, const torch::Tensor& mask,
                       const PolicyLossOptions& o) {
  PolicyLoss out;
  const torch::Tensor ratio = (log_probs - old_log_probs).exp();
  const torch::Tensor surr1 = ratio * advantages;
  const torch::Tensor surr2 = ratio.clamp(1 - o.clip, 1 + o.clip) * advantages;
  torch::Tensor pg = -torch::min(surr1, surr2);
  if (o.dual_clip) pg = torch::where(advantages < 0, torch::min(pg, -(1 + 2 * o.clip) * advantages), pg);
  out.pg = sequence_mean(pg, mask);
  const torch::Tensor diff = ref_log_probs - log_probs;
  const torch::Tensor kl = (diff.exp() - diff - 1).clamp(-10, 10);
  out.kl = sequence_mean(kl, mask);
  out.total = out.pg + o.kl_coef * out.kl;
  torch::NoGradGuard no_grad;
  const torch::Tensor m = mask.to(torch::kFloat64);
  const torch::Tensor clipped = ((ratio < 1 - o.clip) | (ratio > 1 + o.clip)).to(torch::kFloat64) * m;
  out.clip_fraction = clipped.sum() / m.sum().clamp_min(1);
  out.ratio_deviation = ((ratio.to(torch::kFloat64) - 1).abs() * m).sum() / m.sum().clamp_min(1);
  return out;
}

torch::Tensor entropy_from_logits(const torch::Tensor& logits) {
  const torch::Tensor p = logits.softmax(-1);
  return logits.logsumexp(-1) - (p * logits).sum(-1);
}

}  // namespace crossmoe::rl
