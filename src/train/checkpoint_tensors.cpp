#include "train/checkpoint_tensors.hpp"

#include <algorithm>
#include <fstream>
#include <vector>

#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

namespace crossmoe::train {

namespace fs = std::filesystem;

namespace {

fs::path staging_dir(const fs::path& dir) { return dir.string() + ".tmp"; }

// DIR.tmp, written in full, renamed to DIR; then `latest` names it (by rename) and the older
// checkpoints beside it are deleted.
void publish_checkpoint(const fs::path& dir) {
  const fs::path root = dir.parent_path();
  const std::string name = dir.filename().string();
  fs::remove_all(dir);
  fs::rename(staging_dir(dir), dir);
  write_file_atomically(root / "latest", [&](std::ostream& out) { out << name << "\n"; });
  std::vector<fs::path> older;  // listed first: a directory is not changed while it is read
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory() && entry.path().filename() != name) older.push_back(entry.path());
  for (const auto& p : older) fs::remove_all(p);
}

// Weights and optimizer entries ("m.NAME", "v.NAME") checked against the model and put in place:
// every tensor of the model present with its shape, nothing unknown. `weights_from` and
// `optimizer_from` name where they were read, for the errors.
void install(const std::map<std::string, torch::Tensor>& weights, const std::map<std::string, torch::Tensor>& optimizer,
             const std::string& weights_from, const std::string& optimizer_from, TorchModel& model, AdamW& adam) {
  for (auto& [name, t] : model.tensors()) {
    const auto it = weights.find(name);
    require(it != weights.end(), weights_from + " lacks " + name);
    require(it->second.sizes() == t.sizes(), weights_from + ": " + name + " has the wrong shape");
    model.tensor(name) = it->second.to(t.scalar_type());
  }
  for (const auto& [name, t] : weights)
    require(model.tensors().count(name), weights_from + ": unexpected tensor '" + name + "'");
  const std::vector<std::string> trainable = model.trainable_names();
  for (const auto& [key, t] : optimizer) {
    const std::string name = key.size() > 2 ? key.substr(2) : "";
    const bool known = (key.rfind("m.", 0) == 0 || key.rfind("v.", 0) == 0) &&
                       std::binary_search(trainable.begin(), trainable.end(), name);
    require(known, optimizer_from + ": unexpected tensor '" + key + "'");
    require(t.sizes() == model.tensors().at(name).sizes(), optimizer_from + ": " + key + " has the wrong shape");
    (key[0] == 'm' ? adam.m : adam.v)[name] = t;
  }
  for (const auto& [name, m] : adam.m)
    require(adam.v.count(name), optimizer_from + ": m." + name + " without v." + name);
  for (const auto& [name, v] : adam.v)
    require(adam.m.count(name), optimizer_from + ": v." + name + " without m." + name);
}

// A per-rank checkpoint's shards put together: every piece under its key ("w.NAME", "m.NAME",
// "v.NAME"), split tensors concatenated from their slices.
std::map<std::string, torch::Tensor> assemble_shards(const fs::path& dir, const ModelConfig& config, torch::Device device) {
  const CheckpointManifest manifest = read_checkpoint_manifest(dir);
  const std::map<std::string, int> splits = manifest.tp > 1 ? tensor_parallel_splits(config) : std::map<std::string, int>{};
  std::map<std::string, torch::Tensor> whole;
  std::map<std::string, std::vector<torch::Tensor>> slices;  // by key: the slice of each tensor-parallel rank
  for (const CheckpointShard& shard : manifest.shards) {
    const std::string file = (dir / shard.file).string();
    for (auto& [key, t] : load_tensors(dir / shard.file, device)) {
      const size_t dot = key.find('.');
      const std::string kind = key.substr(0, dot), name = dot == std::string::npos ? "" : key.substr(dot + 1);
      require((kind == "w" || kind == "m" || kind == "v") && !name.empty(), file + ": unexpected tensor '" + key + "'");
      const auto split = splits.find(name);
      if (split == splits.end()) {
        require(whole.emplace(key, t).second, file + ": " + key + " is in another shard too");
        continue;
      }
      std::vector<torch::Tensor>& pieces = slices[key];
      pieces.resize(size_t(manifest.tp));
      torch::Tensor& piece = pieces[size_t(shard.rank % manifest.tp)];
      require(!piece.defined(), file + ": " + key + "'s slice " + std::to_string(shard.rank % manifest.tp) +
                                    " is in another shard too");
      piece = t;
    }
  }
  for (auto& [key, pieces] : slices) {
    for (size_t i = 0; i < pieces.size(); ++i) {
      require(pieces[i].defined(), (dir / kCheckpointManifest).string() + ": no shard holds slice " + std::to_string(i) +
                                       " of " + std::to_string(pieces.size()) + " of " + key);
      require(pieces[i].sizes() == pieces[0].sizes(), (dir / kCheckpointManifest).string() + ": the slices of " + key +
                                                          " differ in shape");
    }
    whole[key] = torch::cat(pieces, splits.at(key.substr(2)));
  }
  return whole;
}

}  // namespace

void save_checkpoint(const fs::path& dir, const TorchModel& model, const AdamW& adam, const nlohmann::json& state) {
  begin_checkpoint(dir);
  const fs::path tmp = staging_dir(dir);
  save_tensors(tmp / "model.safetensors", model.tensors());
  std::map<std::string, torch::Tensor> opt;
  for (const auto& [k, t] : adam.m) opt["m." + k] = t;
  for (const auto& [k, t] : adam.v) opt["v." + k] = t;
  save_tensors(tmp / "optimizer.safetensors", opt);
  write_json_file(tmp / "state.json", state);
  publish_checkpoint(dir);
}

void begin_checkpoint(const fs::path& dir) {
  fs::remove_all(staging_dir(dir));
  fs::create_directories(staging_dir(dir));
}

void write_checkpoint_shard(const fs::path& dir, int rank, const std::map<std::string, torch::Tensor>& weights,
                            const AdamW& moments) {
  std::map<std::string, torch::Tensor> shard;
  for (const auto& [name, t] : weights) shard["w." + name] = t;
  for (const auto& [name, t] : moments.m) shard["m." + name] = t;
  for (const auto& [name, t] : moments.v) shard["v." + name] = t;
  save_tensors(staging_dir(dir) / checkpoint_shard_name(rank), shard);
}

void finish_checkpoint(const fs::path& dir, CheckpointManifest layout, const nlohmann::json& state) {
  const fs::path tmp = staging_dir(dir);
  nlohmann::json shards = nlohmann::json::array();
  for (int r = 0; r < layout.world; ++r) {
    const std::string file = checkpoint_shard_name(r);
    require(fs::is_regular_file(tmp / file), (tmp / file).string() + ": rank " + std::to_string(r) + " wrote no shard");
    shards.push_back({{"rank", r}, {"file", file}, {"bytes", int64_t(fs::file_size(tmp / file))}});
  }
  write_json_file(tmp / "state.json", state);
  write_json_file(tmp / kCheckpointManifest, {{"world", layout.world},
                                              {"tp", layout.tp},
                                              {"ep", layout.ep},
                                              {"shard_optimizer", layout.shard_optimizer},
                                              {"shards", shards}});
  publish_checkpoint(dir);
}

void load_checkpoint_tensors(const fs::path& dir, TorchModel& model, AdamW& adam) {
  if (!fs::exists(dir / kCheckpointManifest)) {
    const fs::path weights = dir / "model.safetensors", optimizer = dir / "optimizer.safetensors";
    install(load_tensors(weights, model.device()), load_tensors(optimizer, model.device()), weights.string(),
            optimizer.string(), model, adam);
    return;
  }
  std::map<std::string, torch::Tensor> weights, optimizer;
  for (auto& [key, t] : assemble_shards(dir, model.config(), model.device()))
    (key[0] == 'w' ? weights[key.substr(2)] : optimizer[key]) = t;
  const std::string shards = (dir / "rank-*.safetensors").string();
  install(weights, optimizer, shards, shards, model, adam);
}

}  // namespace crossmoe::train
