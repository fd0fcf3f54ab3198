#pragma once
// A model's weights: a Hugging Face directory's model.safetensors, or shards listed in
// model.safetensors.index.json, or one GGUF file (model/gguf_model.hpp maps its tensors onto the
// same names). Tensors are looked up by name with their shape checked.
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/safetensors.hpp"

namespace crossmoe {

class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& model_dir);  // a directory or a .gguf file
  ~Checkpoint();
  // Reads the weights into anonymous memory, those `keep` accepts (all without it), and drops
  // the file mappings (SafetensorsFile::load_into_memory, GgufFile::copy_into_memory). Tensors
  // left out keep their file_offset and get no data: the expert cache reads them from the file.
  void load_into_memory(const std::function<bool(const std::string&)>& keep = {});
  // The file that holds tensor `name` (which must exist): a safetensors shard, or the GGUF file.
  const std::filesystem::path& path_of(const std::string& name) const;

  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // The tensor, which must exist with exactly this shape; errors name the tensor and directory.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  size_t total_bytes() const;
  // Bytes and tensors of each dtype (a GGUF file's mix of block types, a directory's BF16 and Q8_0).
  std::map<DType, std::pair<size_t, int>> bytes_by_dtype() const;
  int64_t total_elements() const;  // parameters stored, over all tensors
  size_t num_tensors() const { return index_.size(); }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unique_ptr<GgufFile> gguf_;
  std::vector<TensorView> gguf_views_;                 // the GGUF's tensors under Hugging Face names
  std::vector<std::unique_ptr<std::byte[]>> gguf_owned_;  // rows reordered from the file's order
  std::map<std::string, const TensorView*> index_;
  void index_gguf();
  std::map<std::string, const SafetensorsFile*> file_of_;
};

// Throws unless every tensor the description implies is in the checkpoint with its shape,
// naming the first that is not. The parameter totals are compared first, so a config.json that
// claims far more than the files hold fails at once, without walking millions of tensor names.
void check_weights_match(const Checkpoint& checkpoint, const ModelConfig& config);

}  // namespace crossmoe
