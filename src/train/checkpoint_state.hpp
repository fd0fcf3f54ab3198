#pragma once
// The checkpoints of a run directory, as `crossmoe train` and `crossmoe rl selfplay` write them and
// resume from them, without libtorch: finding the newest complete one, reading its state.json (an
// untrusted file, checked field by field; fuzzed by tests/fuzz_checkpoint_state.cpp), deciding
// where a run starts, and cutting log.csv back to the checkpoint. The tensors are read by the
// trainer (train::load_checkpoint_tensors).
//
//   OUT/log.csv                        one row per step or iteration, its number in the first cell
//   OUT/checkpoints/PREFIX-NNNNN/      state.json and the tensors, in one of two layouts:
//                                      whole: model.safetensors, optimizer.safetensors (self-play's,
//                                        and training's before checkpoints were written per rank)
//                                      per rank: manifest.json and rank-RRRRR.safetensors, one per
//                                        rank of the run that wrote it (crossmoe train's)
//                                      written into PREFIX-NNNNN.tmp and renamed into place when complete
//   OUT/checkpoints/latest             the newest one's name, for people: never trusted (a kill
//                                      between the two renames leaves it one behind, and a user
//                                      may have emptied or removed it)
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "train/train_options.hpp"

namespace crossmoe::train {

// How a kind of run names its checkpoint directories: a prefix and a fixed number of digits.
struct CheckpointNaming {
  const char* prefix;
  int digits;
};
inline constexpr CheckpointNaming kTrainCheckpoints{"step-", 7};     // step-0000500
inline constexpr CheckpointNaming kSelfPlayCheckpoints{"iter-", 5};  // iter-00010

// OUT/checkpoints/PREFIX-NNNNN for a step or iteration.
std::filesystem::path checkpoint_dir(const std::filesystem::path& out_dir, const CheckpointNaming& naming, int64_t number);

// A per-rank checkpoint: each rank of the run that wrote it saved its share of the weights and AdamW
// moments in its shard, rank-RRRRR.safetensors, and manifest.json describes the layout:
//   {"world": 4, "tp": 2, "ep": 2, "shard_optimizer": true,
//    "shards": [{"rank": 0, "file": "rank-00000.safetensors", "bytes": 123456}, ...]}
// A shard holds "w.NAME" (weights) and "m.NAME", "v.NAME" (AdamW moments). A tensor that tensor
// parallelism splits (train::tensor_parallel_splits of the checkpoint's model, when tp > 1) is rank
// r's slice, the (r % tp)-th; any other is whole. Each piece of the state is in exactly one shard (of
// the ranks that hold the same piece, the lowest writes it), so that loading assembles every tensor
// from its pieces and cuts it again for the layout of the run that resumes.
inline constexpr const char* kCheckpointManifest = "manifest.json";
struct CheckpointShard {
  std::string file;
  int rank = 0;
  int64_t bytes = 0;  // the size the rank wrote: a shorter file is truncated
};
struct CheckpointManifest {
  int world = 1, tp = 1, ep = 1;
  bool shard_optimizer = false;
  std::vector<CheckpointShard> shards;  // one per rank, in rank order
};
// rank-RRRRR.safetensors
std::string checkpoint_shard_name(int rank);
// dir/manifest.json, checked field by field: anything malformed is an Error naming the file.
CheckpointManifest read_checkpoint_manifest(const std::filesystem::path& dir);

// Why `dir` is not a complete checkpoint (nullopt: it is). Complete means state.json and, in the
// whole layout, model.safetensors and optimizer.safetensors, or in the per-rank layout a readable
// manifest.json and every shard it lists, each of the size it records. All of it is written into
// PREFIX-NNNNN.tmp, the manifest last, and the directory renamed into place only then, so that a kill
// leaves no incomplete PREFIX-NNNNN; the sizes catch a shard damaged or truncated afterwards.
std::optional<std::string> checkpoint_defect(const std::filesystem::path& dir);

// The newest complete checkpoint directory of out_dir; nullopt when there is none. Incomplete ones
// newer than it are skipped with a note on the log that says what they lack.
std::optional<std::filesystem::path> newest_checkpoint_dir(const std::filesystem::path& out_dir,
                                                           const CheckpointNaming& naming);

// Where a run in out_dir starts: with `resume`, its newest complete checkpoint directory; nullopt
// to start from the beginning. Refuses (Error) a directory that holds a run (log.csv or
// checkpoints) but offers no checkpoint to start from: a run is never restarted over (the error
// names the newest incomplete checkpoint and what it lacks).
std::optional<std::filesystem::path> starting_checkpoint_dir(const std::filesystem::path& out_dir, bool resume,
                                                             const CheckpointNaming& naming);

// Rewrites csv (by rename: a kill never loses it) with `header` and the complete rows numbered up
// to `last` (a resumed run writes what follows; a row cut short by a kill is dropped). An existing
// log with another header is an Error (another run's columns, e.g. other --game), but for
// `earlier_header`, the first columns of `header` (what runs wrote before the others were appended):
// its rows get those empty.
void keep_log_rows(const std::filesystem::path& csv, const std::string& header, int64_t last,
                   const std::string& earlier_header = "");

// ---- crossmoe train: state.json holds step, tokens, elapsed_s, config (the model description)
// and settings (training_settings) ----
struct CheckpointInfo {
  std::filesystem::path dir;
  int64_t step = 0, tokens = 0;
  double elapsed_s = 0;
  ModelConfig config;
  nlohmann::json settings;  // training_settings; null in checkpoints written before they were stored
};
// dir/state.json, checked field by field: anything malformed is an Error naming the file.
CheckpointInfo read_checkpoint_state(const std::filesystem::path& dir);
// The newest complete checkpoint of a run directory, as resuming finds it (nullopt: none).
std::optional<CheckpointInfo> newest_checkpoint(const std::filesystem::path& out_dir);
// starting_checkpoint_dir for a training run, its state read.
std::optional<CheckpointInfo> starting_checkpoint(const std::filesystem::path& out_dir, bool resume);
// Refuses (Error) to resume `checkpoint` with weight-shaping settings that differ from its own,
// naming each difference, unless options.force_settings; or when it already reached options.steps.
void check_resume(const TrainOptions& options, const CheckpointInfo& checkpoint);

// ---- crossmoe rl selfplay: state.json holds iteration, optimizer_steps, elapsed_s and
// start_model (the absolute path of the model the run started from) ----
struct SelfPlayState {
  std::filesystem::path dir;
  int iteration = 0;  // iterations done
  int64_t optimizer_steps = 0;
  double elapsed_s = 0;
  std::string start_model;
};
// dir/state.json, checked field by field: anything malformed is an Error naming the file.
SelfPlayState read_selfplay_state(const std::filesystem::path& dir);
// starting_checkpoint_dir for a self-play run, its state read; a checkpoint of a run that started
// from another model than model_dir is refused.
std::optional<SelfPlayState> starting_selfplay_state(const std::filesystem::path& out_dir, bool resume,
                                                     const std::filesystem::path& model_dir);

}  // namespace crossmoe::train
