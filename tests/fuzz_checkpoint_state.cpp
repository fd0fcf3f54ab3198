// A checkpoint's state.json, as `train --resume` and `rl selfplay --resume` read it: the trainer's
// (step, tokens, the model description, the training settings), then what resuming does with it
// (the model's parameter counts, the settings applied to the options, range-checked and compared
// with the checkpoint's), or self-play's (iteration, optimizer steps, the model it started from);
// or a per-rank checkpoint's manifest.json (the layout and the shards), and what deciding whether
// the checkpoint is complete makes of it. Every Error the reader raises must name the file.
#include <optional>
#include <string>

#include "fuzz_harness.hpp"
#include "model/config.hpp"
#include "train/checkpoint_state.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  using namespace crossmoe;
  using namespace crossmoe::train;
  const auto dir = fuzz::scratch_dir() / "checkpoint";
  std::filesystem::create_directories(dir);
  fuzz::write_scratch("checkpoint/state.json", bytes);
  if (bytes.find("\"shards\"") != std::string::npos) {
    fuzz::write_scratch("checkpoint/manifest.json", bytes);
    const std::optional<std::string> defect = checkpoint_defect(dir);  // never throws: says what is wrong
    fuzz::check(defect.has_value(), "a checkpoint without its shard files counted as complete");
    CheckpointManifest m;
    try {
      m = read_checkpoint_manifest(dir);
    } catch (const Error& e) {
      fuzz::check(std::string(e.what()).find((dir / "manifest.json").string()) != std::string::npos,
                  "an error that does not name the checkpoint's manifest.json");
      throw;
    }
    fuzz::check(m.world >= 1 && m.world % (m.tp * m.ep) == 0 && m.shards.size() == size_t(m.world),
                "a manifest of an impossible layout was accepted");
    for (size_t r = 0; r < m.shards.size(); ++r)
      fuzz::check(m.shards[r].rank == int(r) && m.shards[r].file == checkpoint_shard_name(int(r)) && m.shards[r].bytes >= 0,
                  "a shard other than its rank's file was accepted");
    return;
  }
  const bool selfplay = bytes.find("\"iteration\"") != std::string::npos;
  CheckpointInfo info;
  try {
    if (selfplay) {
      const SelfPlayState s = read_selfplay_state(dir);
      fuzz::check(s.iteration >= 1 && s.optimizer_steps >= 0 && s.elapsed_s >= 0 && !s.start_model.empty(),
                  "a self-play state out of range was accepted");
      return;
    }
    info = read_checkpoint_state(dir);
  } catch (const Error& e) {
    fuzz::check(std::string(e.what()).find((dir / "state.json").string()) != std::string::npos,
                "an error that does not name the checkpoint's state.json");
    throw;
  }
  fuzz::check(info.step >= 1 && info.tokens >= 0 && info.elapsed_s >= 0, "a training state out of range was accepted");
  count_parameters(info.config);
  if (info.settings.is_null()) return;
  // Accepted settings are ones a run can start with, they round-trip, and resuming with exactly
  // them finds no difference.
  TrainOptions options;
  options.out_dir = fuzz::scratch_dir();
  options.data_dir = "data";
  options = with_settings(options, info.settings);
  check_options(options);
  const nlohmann::json settings = training_settings(options);
  fuzz::check(training_settings(with_settings(TrainOptions{}, settings)) == settings, "settings do not round-trip");
  try {
    check_resume(options, info);
  } catch (const Error& e) {
    fuzz::check(std::string(e.what()).find("already finished") != std::string::npos,
                "resuming with the checkpoint's own settings was refused");
  }
}
