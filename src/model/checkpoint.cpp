#include "model/checkpoint.hpp"

#include <nlohmann/json.hpp>
#include <set>

#include "model/gguf_model.hpp"
#include "model/tensor_names.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe {

Checkpoint::Checkpoint(const std::filesystem::path& model_dir) : dir_(model_dir) {
  namespace fs = std::filesystem;
  if (is_gguf_file(model_dir)) {
    gguf_ = std::make_unique<GgufFile>(model_dir);
    index_gguf();
    return;
  }
  require(fs::is_directory(model_dir), "model " + model_dir.string() + " is neither a directory nor a GGUF file");
  const fs::path index_path = model_dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    const nlohmann::json index = read_json_file(index_path);
    require(index.is_object() && index.contains("weight_map") && index.at("weight_map").is_object(),
            index_path.string() + ": missing 'weight_map'");
    std::set<std::string> shards;
    for (const auto& [name, file] : index.at("weight_map").items()) {
      require(file.is_string(), index_path.string() + ": weight_map entry '" + name + "' is not a file name");
      const std::string shard = file.get<std::string>();
      require(fs::path(shard).filename() == shard,
              index_path.string() + ": shard name '" + shard + "' must be a plain file name");
      shards.insert(shard);
    }
    for (const auto& shard : shards)
      files_.push_back(std::make_unique<SafetensorsFile>(model_dir / shard));
    for (const auto& file : files_)
      for (const auto& [name, view] : file->tensors()) index_[name] = &view, file_of_[name] = file.get();
    for (const auto& [name, file] : index.at("weight_map").items())
      require(index_.count(name), index_path.string() + ": tensor '" + name + "' is not in shard " +
                                      file.get<std::string>());
  } else {
    const fs::path single = model_dir / "model.safetensors";
    require(fs::exists(single), "no model.safetensors or model.safetensors.index.json in " + model_dir.string());
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& [name, view] : files_[0]->tensors()) index_[name] = &view, file_of_[name] = files_[0].get();
  }
}

Checkpoint::~Checkpoint() = default;

void Checkpoint::index_gguf() {
  index_.clear();
  gguf_owned_.clear();
  gguf_views_ = gguf_tensor_views(*gguf_, gguf_model_config(*gguf_), gguf_owned_);
  for (const TensorView& v : gguf_views_) index_[v.name] = &v;
}

void Checkpoint::load_into_memory(const std::function<bool(const std::string&)>& keep) {
  if (gguf_) {
    gguf_->copy_into_memory(keep ? gguf_tensors_left_out(*gguf_, gguf_model_config(*gguf_), keep) : std::set<std::string>{});
    index_gguf();  // the views point into the moved data (null for tensors left in the file)
    return;
  }
  for (auto& file : files_) file->load_into_memory(keep);
}

const std::filesystem::path& Checkpoint::path_of(const std::string& name) const {
  require(find(name) != nullptr, "checkpoint " + dir_.string() + " is missing tensor '" + name + "'");
  if (gguf_) return gguf_->path();
  return file_of_.at(name)->path();
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorView& Checkpoint::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView* t = find(name);
  require(t != nullptr, "checkpoint " + dir_.string() + " is missing tensor '" + name + "'");
  if (t->shape != shape) {
    TensorView expected;
    expected.shape = shape;
    throw Error("tensor '" + name + "' has shape " + t->shape_string() + ", expected " +
                expected.shape_string());
  }
  return *t;
}

size_t Checkpoint::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : index_) n += t->nbytes;
  return n;
}

std::map<DType, std::pair<size_t, int>> Checkpoint::bytes_by_dtype() const {
  std::map<DType, std::pair<size_t, int>> by;
  for (const auto& [name, t] : index_) {
    by[t->dtype].first += t->nbytes;
    ++by[t->dtype].second;
  }
  return by;
}

int64_t Checkpoint::total_elements() const {
  int64_t n = 0;
  for (const auto& [name, t] : index_) n += t->numel();
  return n;
}

void check_weights_match(const Checkpoint& checkpoint, const ModelConfig& config) {
  const int64_t implied = count_parameters(config).stored, held = checkpoint.total_elements();
  require(implied <= held, "config.json describes " + std::to_string(implied) + " parameters but the weights in " +
                               checkpoint.dir().string() + " hold " + std::to_string(held) +
                               ": config.json does not belong to these weights");
  for (const TensorSpec& spec : expected_tensors(config)) checkpoint.get(spec.name, spec.shape);
}

}  // namespace crossmoe
