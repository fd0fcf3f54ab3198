// GGUF files, as every command that takes a model reads one: the header and tensor table
// (model/gguf.hpp), the model description and tensor mapping (model/gguf_model.hpp: Q/K rows
// reordered, experts split, every tensor read), and the tokenizer built from tokenizer.ggml.*
// (model/gguf_tokenizer.hpp: encoding and decoding a text).
#include <vector>

#include "fuzz_harness.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_tokenizer.hpp"
#include "tokenizer/tokenizer.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  // An exact-size heap copy, so a read past the end is caught by AddressSanitizer.
  std::vector<std::byte> image(bytes.size());
  if (!bytes.empty()) std::memcpy(image.data(), bytes.data(), bytes.size());
  const crossmoe::GgufFile file(image.data(), image.size(), "fuzz.gguf");
  unsigned sum = 0;
  for (const crossmoe::GgufTensor& t : file.tensors())
    for (size_t i = 0; i < t.nbytes; ++i) sum += std::to_integer<unsigned>(t.data[i]);
  if (const auto tokenizer_json = crossmoe::gguf_tokenizer_json(file)) {
    crossmoe::Tokenizer tokenizer(*tokenizer_json);
    const std::vector<int> ids = tokenizer.encode("Hello, world! <|im_end|> 123 \xe4\xbd\xa0\xe5\xa5\xbd");
    (void)tokenizer.decode(ids);
  }
  (void)crossmoe::gguf_tokenizer_config(file);
  const crossmoe::ModelConfig config = crossmoe::gguf_model_config(file);
  std::vector<std::unique_ptr<std::byte[]>> owned;
  for (const crossmoe::TensorView& v : crossmoe::gguf_tensor_views(file, config, owned)) {
    crossmoe::fuzz::check(v.nbytes == 0 || v.data != nullptr, "tensor view without data");
    for (size_t i = 0; i < v.nbytes; ++i) sum += std::to_integer<unsigned>(v.data[i]);
  }
  (void)sum;
}
