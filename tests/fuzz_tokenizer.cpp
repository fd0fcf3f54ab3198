// tokenizer.json, as every command that takes text loads it: the reader (normalizers,
// pre-tokenizer regexes, BPE vocabulary and merges, added tokens, decoders, post-processor), then
// encoding text with special tokens, stray bytes and every script the real tokenizers handle, and
// decoding the ids and some that the file may not have.
#include <string>
#include <vector>

#include "fuzz_harness.hpp"
#include "tokenizer/tokenizer.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  using namespace crossmoe;
  Tokenizer tokenizer = Tokenizer::load(fuzz::write_scratch("tokenizer.json", bytes));
  const std::string texts[] = {"Hello, world! It's 2024: 12345 tokens.\n\t  x",
                               "中文字符和 emoji 😀 Ünïcödé", "<|im_start|>user\nhi<|im_end|><s></s>[INST]",
                               std::string("bad \xff\xfe bytes \xe4\xb8", 16)};
  for (const std::string& text : texts) {
    try {
      const std::vector<int> ids = tokenizer.encode(text, true);
      (void)tokenizer.decode(ids);
      (void)tokenizer.decode(ids, true);
    } catch (const Error&) {  // e.g. stray bytes for a model without byte fallback: still our error
    }
  }
  const int vocab = tokenizer.vocab_size();
  (void)tokenizer.decode({0, vocab / 2, vocab - 1, vocab, vocab + 1000});
  for (int id = 0; id < vocab && id < 300; ++id) (void)tokenizer.id_to_token(id);
}
