#pragma once
// The tensors of a checkpoint (train/checkpoint_state.hpp: the layouts, the completeness rule):
// written whole by one process (crossmoe rl selfplay) or as one shard per rank (crossmoe train),
// and read back whole from either layout, so that a run resumes on any number of ranks and any
// tensor- and expert-parallel layout (each rank then cuts what it holds from the whole).
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include <torch/torch.h>

#include "train/checkpoint_state.hpp"
#include "train/optimizer.hpp"
#include "train/torch_model.hpp"

namespace crossmoe::train {

// A whole-layout checkpoint into `dir`: the weights, the AdamW moments and state.json, written into
// DIR.tmp and renamed into place (publish_checkpoint). A kill at any point leaves a complete checkpoint.
void save_checkpoint(const std::filesystem::path& dir, const TorchModel& model, const AdamW& adam,
                     const nlohmann::json& state);

// A per-rank checkpoint into `dir`, in three moves with a barrier between each:
//   1. rank 0: begin_checkpoint, an empty DIR.tmp;
//   2. every rank: write_checkpoint_shard, the weights and moments this rank alone writes (of the
//      ranks that hold the same piece, the lowest), slices as it holds them;
//   3. rank 0: finish_checkpoint, manifest.json (`layout`, with each shard's size as written) and
//      state.json, then publish_checkpoint.
void begin_checkpoint(const std::filesystem::path& dir);
void write_checkpoint_shard(const std::filesystem::path& dir, int rank, const std::map<std::string, torch::Tensor>& weights,
                            const AdamW& moments);
void finish_checkpoint(const std::filesystem::path& dir, CheckpointManifest layout, const nlohmann::json& state);

// A checkpoint's weights into `model` and its AdamW moments into `adam`, from either layout (the
// per-rank shards assembled: split slices concatenated): every tensor of the model present with its
// shape, nothing unknown, nothing twice; an Error naming the file otherwise.
void load_checkpoint_tensors(const std::filesystem::path& dir, TorchModel& model, AdamW& adam);

}  // namespace crossmoe::train
