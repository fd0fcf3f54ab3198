#include "train/optimizer.hpp"

#include <cmath>
#include <map>

namespace crossmoe::train {

void AdamW::step(TorchModel& model, const std::vector<std::string>& names, const AdamWHyper& h, double lr, int64_t t) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> params, grads, ms, vs, decayed;
  for (const std::string& name : names) {
    torch::Tensor& p = model.tensor(name);
    if (!p.grad().defined()) continue;
    auto [mi, fresh] = m.try_emplace(name);
    if (fresh) mi->second = torch::zeros_like(p), v[name] = torch::zeros_like(p);
    params.push_back(p), grads.push_back(p.grad()), ms.push_back(mi->second), vs.push_back(v[name]);
    if (p.dim() >= 2) decayed.push_back(p);
  }
  if (params.empty()) return;
  const double bc1 = 1.0 - std::pow(h.beta1, double(t)), bc2 = 1.0 - std::pow(h.beta2, double(t));
  if (h.weight_decay > 0 && !decayed.empty()) at::_foreach_mul_(decayed, 1.0 - lr * h.weight_decay);
  at::_foreach_mul_(ms, h.beta1);
  at::_foreach_add_(ms, grads, 1.0 - h.beta1);
  at::_foreach_mul_(vs, h.beta2);
  at::_foreach_addcmul_(vs, grads, grads, 1.0 - h.beta2);
  std::vector<torch::Tensor> denom = at::_foreach_sqrt(vs);
  at::_foreach_div_(denom, std::sqrt(bc2));
  at::_foreach_add_(denom, h.eps);
  at::_foreach_addcdiv_(params, ms, denom, -lr / bc1);
}

torch::Tensor clip_gradients(TorchModel& model, const std::vector<std::string>& names, double max_norm,
                             const std::vector<SplitGradients>& split) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  std::vector<std::vector<torch::Tensor>> split_grads(split.size());
  std::map<std::string, size_t> group_of;
  for (size_t g = 0; g < split.size(); ++g)
    for (const std::string& name : split[g].names) group_of[name] = g;
  for (const auto& name : names) {
    if (!model.tensor(name).grad().defined()) continue;
    const auto g = group_of.find(name);
    (g == group_of.end() ? grads : split_grads[g->second]).push_back(model.tensor(name).grad());
  }
  auto norm_of = [&](const std::vector<torch::Tensor>& some) {  // on the model's device, where the sums run
    return some.empty() ? torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(model.device()))
                        : torch::stack(at::_foreach_norm(some, 2)).norm();
  };
  torch::Tensor norm = norm_of(grads);
  for (size_t g = 0; g < split.size(); ++g) {
    torch::Tensor squares = norm_of(split_grads[g]).pow(2).to(torch::kFloat64).reshape({1});
    split[g].sum(squares);
    norm = (norm.to(squares.device(), torch::kFloat64).pow(2) + squares[0]).sqrt().to(norm.scalar_type());
    grads.insert(grads.end(), split_grads[g].begin(), split_grads[g].end());
  }
  if (grads.empty()) return norm;
  // min(1, max_norm / (norm + 1e-6)): a factor of exactly 1 leaves gradients under the bound as they are.
  if (max_norm > 0) {
    const torch::Tensor factor = (max_norm / (norm + 1e-6)).clamp_max(1.0);
#if TORCH_VERSION_MAJOR >= 2
    at::_foreach_mul_(grads, factor);
#else  // Debian's libtorch 1.13 has no foreach product with a tensor scalar
    for (torch::Tensor& g : grads) g.mul_(factor);
#endif
  }
  return norm;
}

std::mt19937_64 stream_rng(uint64_t seed, uint64_t stream, uint64_t index) {
  std::seed_seq seq{uint32_t(seed), uint32_t(seed >> 32), uint32_t(stream), uint32_t(index), uint32_t(index >> 32)};
  return std::mt19937_64(seq);
}

}  // namespace crossmoe::train
