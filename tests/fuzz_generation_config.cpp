// generation_config.json beside a valid config.json: the eos tokens the model reader adds, the
// sampling defaults generate and chat take from it, and one sampled token with those settings.
#include <vector>

#include "fuzz_harness.hpp"
#include "model/hf_config.hpp"
#include "runtime/sampler.hpp"

namespace {

const char* const kConfig =
    R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16})";

}  // namespace

CROSSMOE_FUZZ_TARGET(bytes) {
  using namespace crossmoe;
  fuzz::write_scratch("config.json", kConfig);
  fuzz::write_scratch("generation_config.json", bytes);
  const ModelConfig config = read_model_config(fuzz::scratch_dir());
  Sampler sampler(generation_defaults(fuzz::scratch_dir()));
  std::vector<float> logits(size_t(config.vocab_size));
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(i % 7) - 3.0f;
  const int token = sampler.sample(logits.data(), config.vocab_size, {1, 2, 3, 2});
  fuzz::check(token >= 0 && token < config.vocab_size, "the sampler returned a token outside the vocabulary");
}
