#include "rl/rollout_generator.hpp"

#include "rl/rollout.hpp"
#include "util/error.hpp"

namespace crossmoe::rl {

namespace {

// The model first, then the engine that uses it.
class OwningRolloutGenerator : public games::TokenGenerator {
 public:
  OwningRolloutGenerator(const std::filesystem::path& model_dir, torch::Device device, bool bf16, int rows,
                         int capacity)
      : model_(train::TorchModel::load(model_dir, device)),
        engine_(model_, rows, capacity, bf16 ? torch::kBFloat16 : torch::kFloat32) {}
  void reset() override { engine_.reset(); }
  int sequences() const override { return engine_.sequences(); }
  const std::vector<int>& tokens(int sequence) const override { return engine_.tokens(sequence); }
  int free_space(int sequence) const override { return engine_.free_space(sequence); }
  std::vector<games::Generation> generate(const std::vector<games::GenerationRequest>& requests,
                                          const std::vector<int>& stop_tokens, const games::SamplingOptions& sampling,
                                          std::mt19937_64& rng) override {
    return engine_.generate(requests, stop_tokens, sampling, rng);
  }

 private:
  train::TorchModel model_;
  RolloutEngine engine_;
};

}  // namespace

std::unique_ptr<games::TokenGenerator> make_rollout_generator(const std::filesystem::path& model_dir,
                                                              const std::string& device, bool bf16, int rows,
                                                              int capacity) {
  torch::Device dev(torch::kCPU);
  try {
    dev = torch::Device(device);
  } catch (const std::exception&) {
    throw UsageError("--device must be cpu, cuda or cuda:N, got '" + device + "'");
  }
  if (dev.is_cuda()) require(torch::cuda::is_available(), "--device " + device + " but no CUDA device is available");
  return std::make_unique<OwningRolloutGenerator>(model_dir, dev, bf16, rows, capacity);
}

}  // namespace crossmoe::rl
