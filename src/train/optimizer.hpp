#pragma once
// The optimiser and the seeded random streams shared by the pre-training loop (trainer) and the
// RL loop (rl/selfplay).
#include <torch/torch.h>

#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "train/torch_model.hpp"

namespace crossmoe::train {

struct AdamWHyper {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;  // decay on matrices only
};

// PyTorch's AdamW (decoupled weight decay, bias-corrected moments) with multi-tensor (_foreach)
// kernels, state kept by tensor name so that checkpoints store it under readable names. Tensors
// without a gradient this step (experts nobody chose) are left alone, as torch.optim does.
struct AdamW {
  std::map<std::string, torch::Tensor> m, v;
  // On CUDA, libtorch's fused AdamW kernel where this build has it (fused_adamw_built): the same update
  // to float rounding. False: the multi-tensor kernels everywhere (train --fused off, for comparison).
  bool fused = true;
  // t: the 1-based step number, for bias correction.
  void step(TorchModel& model, const std::vector<std::string>& names, const AdamWHyper& h, double lr, int64_t t);
};

// Whether this build has libtorch's fused AdamW (at::_fused_adamw_, probed at build time).
bool fused_adamw_built();

// Clips the global gradient norm to max_norm (0 = no clipping); returns the norm before clipping as a
// scalar tensor on the gradients' device. Nothing waits for the device: on a GPU the step that
// follows is queued behind it, and the caller reads the norm when it next syncs anyway.
// Under expert or tensor parallelism, each of `split` names gradients that each rank holds its own of
// (its routed experts, its slices): their squares are summed over the ranks by its `sum` (every rank
// must call it); a name belongs to one of them at most.
struct SplitGradients {
  std::vector<std::string> names;
  std::function<void(torch::Tensor&)> sum;
};
torch::Tensor clip_gradients(TorchModel& model, const std::vector<std::string>& names, double max_norm,
                             const std::vector<SplitGradients>& split = {});

// Random numbers that depend only on (seed, stream, index): what a step draws is the same whether
// the run was resumed or not, so resuming reproduces the run bit for bit.
std::mt19937_64 stream_rng(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace crossmoe::train
