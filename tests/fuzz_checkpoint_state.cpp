// A checkpoint's state.json, as `train --resume` and `rl selfplay --resume` read it: the trainer's
// (step, tokens, the model description, the training settings), then what resuming does with it
// (the model's parameter counts, the settings applied to the options, range-checked and compared
// with the checkpoint's), or self-play's (iteration, optimizer steps, the model it started from).
// Every Error the reader raises must name the file.
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
