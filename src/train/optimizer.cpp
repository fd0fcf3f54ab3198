#include "train/optimizer.hpp"

#include <cmath>
#include <map>

namespace crossmoe::train {

#ifdef CROSSMOE_HAVE_FUSED_ADAMW
namespace {
// libtorch's fused AdamW (at::_fused_adamw_, as torch.optim.AdamW(fused=True)): the whole update in one
// kernel over all tensors instead of eight multi-tensor passes, with the same arithmetic in float32.
// It decays every tensor it is given, so matrices and the rest go in two calls; it reads the step
// number (bias correction) from a tensor per parameter, here one tensor shared by all.
void fused_adamw(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                 const std::vector<torch::Tensor>& ms, const std::vector<torch::Tensor>& vs, const AdamWHyper& h, double lr,
                 int64_t t) {
  std::vector<torch::Tensor> group[2][4];  // [decayed][params, grads, m, v]
  for (size_t i = 0; i < params.size(); ++i) {
    const int decayed = h.weight_decay > 0 && params[i].dim() >= 2 ? 1 : 0;
    group[decayed][0].push_back(params[i]), group[decayed][1].push_back(grads[i]);
    group[decayed][2].push_back(ms[i]), group[decayed][3].push_back(vs[i]);
  }
  const torch::Tensor step = torch::full({}, double(t), params[0].options());
  for (int decayed = 0; decayed < 2; ++decayed) {
    const std::vector<torch::Tensor>* g = group[decayed];
    if (g[0].empty()) continue;
    const std::vector<torch::Tensor> steps(g[0].size(), step);
    at::_fused_adamw_(g[0], g[1], g[2], g[3], {}, steps, lr, h.beta1, h.beta2, decayed ? h.weight_decay : 0.0, h.eps,
                      false, false);
  }
}
// Where it applies: every tensor float32, contiguous, on one CUDA device (the trainer's master weights on a GPU).
bool fused_adamw_applies(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads) {
  const torch::Device device = params[0].device();
  if (!device.is_cuda()) return false;
  for (size_t i = 0; i < params.size(); ++i)
    for (const torch::Tensor* t : {&params[i], &grads[i]})
      if (t->device() != device || t->scalar_type() != torch::kFloat32 || !t->is_contiguous()) return false;
  return true;
}
}  // namespace
#endif

bool fused_adamw_built() {
#ifdef CROSSMOE_HAVE_FUSED_ADAMW
  return true;
#else
  return false;
#endif
}

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
#ifdef CROSSMOE_HAVE_FUSED_ADAMW
  if (fused && fused_adamw_applies(params, grads)) {
    fused_adamw(params, grads, ms, vs, h, lr, t);
    return;
  }
#endif
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
