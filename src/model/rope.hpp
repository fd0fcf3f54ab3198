#pragma once
// Rotary position embedding tables, computed as Hugging Face computes them (float32 inverse
// frequencies and angles) for the default, linear, dynamic-NTK, YaRN and LLaMA-3 types.
#include <vector>

#include "model/config.hpp"

namespace crossmoe {

class RopeTable {
 public:
  RopeTable(const RopeConfig& rope, int head_dim, int max_position_embeddings);
  // cos and sin (head_dim/2 each, already times the attention factor) for a position.
  // `sequence_length` only matters for dynamic NTK, which rescales past the trained length.
  void at(int position, int sequence_length, float* cos, float* sin) const;
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  std::vector<float> dynamic_inv_freq(int sequence_length) const;
  RopeConfig rope_;
  int dim_;
  int max_positions_;
  std::vector<float> inv_freq_;
  float attention_factor_ = 1.0f;
};

}  // namespace crossmoe
