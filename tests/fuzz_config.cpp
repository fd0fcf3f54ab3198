// config.json, as `crossmoe info/generate/bench` read it from a downloaded model directory: the
// reader, then the parameter counts that `info` prints for any config it accepts.
#include "fuzz_harness.hpp"
#include "model/config.hpp"
#include "model/hf_config.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  crossmoe::fuzz::write_scratch("config.json", bytes);
  const crossmoe::ModelConfig config = crossmoe::read_model_config(crossmoe::fuzz::scratch_dir());
  (void)crossmoe::count_parameters(config);
}
