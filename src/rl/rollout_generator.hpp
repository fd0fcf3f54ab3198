#pragma once
// The rollout engine as a games::TokenGenerator that owns its model: how `crossmoe games eval`
// plays many games at once on the GPU. This header does not include libtorch.
#include <filesystem>
#include <memory>
#include <string>

#include "games/chat_match.hpp"

namespace crossmoe::rl {

// Loads model_dir on `device` ("cpu", "cuda", "cuda:1"); `rows` sequences of `capacity` tokens,
// matrix products in bf16 when asked. Throws Error when the device is not there.
std::unique_ptr<games::TokenGenerator> make_rollout_generator(const std::filesystem::path& model_dir,
                                                              const std::string& device, bool bf16, int rows,
                                                              int capacity);

}  // namespace crossmoe::rl
