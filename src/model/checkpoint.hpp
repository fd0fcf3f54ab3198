#pragma once
// A Hugging Face model directory's weights: model.safetensors, or shards listed in
// model.safetensors.index.json. Tensors are looked up by name with their shape checked.
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/safetensors.hpp"

namespace crossmoe {

class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& model_dir);
  // Reads the weights into anonymous memory, those `keep` accepts (all without it), and drops
  // the file mappings (SafetensorsFile::load_into_memory).
  void load_into_memory(const std::function<bool(const std::string&)>& keep = {});
  // The file that holds tensor `name` (which must exist).
  const SafetensorsFile& file_of(const std::string& name) const;

  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // The tensor, which must exist with exactly this shape; errors name the tensor and directory.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  size_t total_bytes() const;
  int64_t total_elements() const;  // parameters stored, over all tensors
  size_t num_tensors() const { return index_.size(); }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
  std::map<std::string, const SafetensorsFile*> file_of_;
};

// Throws unless every tensor the description implies is in the checkpoint with its shape,
// naming the first that is not. The parameter totals are compared first, so a config.json that
// claims far more than the files hold fails at once, without walking millions of tensor names.
void check_weights_match(const Checkpoint& checkpoint, const ModelConfig& config);

}  // namespace crossmoe
