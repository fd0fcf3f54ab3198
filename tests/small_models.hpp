#pragma once
// Tiny versions of the layout presets, shared by the tests that compare implementations.
#include <string>

#include "model/init.hpp"

namespace crossmoe::testing_models {

inline ModelConfig small(const std::string& layout) {
  ModelConfig c = layout_preset(layout);
  c.hidden_size = 64;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.moe.expert_intermediate_size = 32;
  c.vocab_size = 300;
  return c;
}

}  // namespace crossmoe::testing_models
