#pragma once
// The policy update's loss, as ROLL's ActorWorker.loss_func computes it for MARS's configs:
//   ratio = exp(logp - logp_old)
//   pg    = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)
//   dual clip (A < 0): pg = min(pg, -(1 + 2 eps) A)    (bounds the loss of a very unlikely token)
//   kl    = exp(logp_ref - logp) - (logp_ref - logp) - 1, clamped to [-10, 10]   ("k3")
//   loss  = agg(pg) + kl_coef * agg(kl)
// agg is "seq-mean-token-sum" (MARS's default loss_agg_mode): the masked mean over each
// sequence's tokens, then the mean over sequences that have tokens.
#include <torch/torch.h>

namespace crossmoe::rl {

struct PolicyLossOptions {
  double clip = 0.2;       // pg_clip
  bool dual_clip = true;   // dual_clip_loss
  double kl_coef = 0.2;    // kl_loss_coef (use_kl_loss)
};

struct PolicyLoss {
  torch::Tensor total, pg, kl;  // scalars; total carries the gradient
  torch::Tensor clip_fraction;  // share of the model's tokens whose ratio left [1 - eps, 1 + eps]
  torch::Tensor ratio_deviation;  // mean |ratio - 1| over the model's tokens: how far the policy moved
};

// All [B, T]: log-probs of the taken tokens under the policy being trained, at rollout time, and
// under the frozen reference; advantages; mask 1 on the model's tokens.
PolicyLoss policy_loss(const torch::Tensor& log_probs, const torch::Tensor& old_log_probs,
                       const torch::Tensor& ref_log_probs, const torch::Tensor& advantages, const torch::Tensor& mask,
                       const PolicyLossOptions& options);

// seq-mean-token-sum aggregation of a [B, T] matrix under a [B, T] mask.
torch::Tensor sequence_mean(const torch::Tensor& values, const torch::Tensor& mask);

// Per-position entropy of the softmax of logits [.., vocab].
torch::Tensor entropy_from_logits(const torch::Tensor& logits);

}  // namespace crossmoe::rl
