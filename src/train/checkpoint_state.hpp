#pragma once
// The checkpoints of a run directory, as `crossmoe train` and `crossmoe rl selfplay` write them and
// resume from them, without libtorch: finding the newest complete one, reading its state.json (an
// untrusted file, checked field by field; fuzzed by tests/fuzz_checkpoint_state.cpp), deciding
// where a run starts, and cutting log.csv back to the checkpoint. The tensors are read by the
// trainer (train::load_checkpoint_tensors).
//
//   OUT/log.csv                        one row per step or iteration, its number in the first cell
//   OUT/checkpoints/PREFIX-NNNNN/      state.json, model.safetensors, optimizer.safetensors; written
//                                      into PREFIX-NNNNN.tmp and renamed into place when complete
//   OUT/checkpoints/latest             the newest one's name, for people: never trusted (a kill
//                                      between the two renames leaves it one behind, and a user
//                                      may have emptied or removed it)
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

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

// The newest checkpoint directory of out_dir with all three files; nullopt when there is none.
// Incomplete ones (a .tmp, a missing file) are skipped with a note on the log.
std::optional<std::filesystem::path> newest_checkpoint_dir(const std::filesystem::path& out_dir,
                                                           const CheckpointNaming& naming);

// Where a run in out_dir starts: with `resume`, its newest complete checkpoint directory; nullopt
// to start from the beginning. Refuses (Error) a directory that holds a run (log.csv or
// checkpoints) but offers no checkpoint to start from: a run is never restarted over.
std::optional<std::filesystem::path> starting_checkpoint_dir(const std::filesystem::path& out_dir, bool resume,
                                                             const CheckpointNaming& naming);

// Rewrites csv (by rename: a kill never loses it) with `header` and the complete rows numbered up
// to `last` (a resumed run writes what follows; a row cut short by a kill is dropped). An existing
// log with another header is an Error (another run's columns, e.g. other --game).
void keep_log_rows(const std::filesystem::path& csv, const std::string& header, int64_t last);

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
