#pragma once
// tokenizer.json as Hugging Face's tokenizers library runs it:
//   added tokens are split out first (leftmost-longest, with their lstrip / rstrip /
//   single_word / normalized flags); each remaining piece is normalised, pre-tokenized into
//   words, and each word is encoded by the BPE model; the post-processor may add special
//   tokens. Decoding maps ids to tokens and runs the decoder chain.
// Supported components (others are an error naming them):
//   normalizers     NFC NFD NFKC NFKD Lowercase Prepend Replace(string) Strip Sequence
//   pre-tokenizers  ByteLevel Split(string or regex) Metaspace Digits Sequence
//   model           BPE (byte_fallback, unk, fuse_unk, ignore_merges, subword prefix/suffix)
//   decoders        ByteLevel Metaspace Replace(string) ByteFallback Fuse Strip Sequence
//   post-processors ByteLevel TemplateProcessing Sequence
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe.hpp"

namespace crossmoe {

namespace tokenizer_parts {
struct Normalizer;
struct PreTokenizer;
struct Decoder;
struct PostProcessor;
}  // namespace tokenizer_parts

struct AddedToken {
  int id;
  std::string content;
  bool special, lstrip, rstrip, single_word, normalized;
  std::string pattern;  // what is matched: the content, normalised for `normalized` tokens
};

class Tokenizer {
 public:
  static Tokenizer load(const std::filesystem::path& tokenizer_json);
  explicit Tokenizer(const nlohmann::json& tokenizer_json);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Byte-level models take any bytes (invalid UTF-8 becomes byte tokens); other models
  // require valid UTF-8 and throw Error otherwise.
  std::vector<int> encode(std::string_view text, bool add_special_tokens = false);
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens = false) const;

  int token_to_id(std::string_view token) const;  // model or added token; -1 when absent
  std::string id_to_token(int id) const;          // "" when absent
  bool is_special(int id) const;
  int vocab_size() const;                         // one past the largest id
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  const Bpe& model() const { return *model_; }

 private:
  struct Segment {
    size_t begin, end;
    int added;  // index into added_, or -1 for plain text
  };
  std::vector<Segment> split_added(std::string_view text, bool normalized_tokens) const;
  void encode_text(std::string_view text, bool at_start, std::vector<int>& out);
  std::unique_ptr<Bpe> model_;
  std::unique_ptr<tokenizer_parts::Normalizer> normalizer_;
  std::unique_ptr<tokenizer_parts::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_parts::Decoder> decoder_;
  std::unique_ptr<tokenizer_parts::PostProcessor> post_processor_;
  std::vector<AddedToken> added_;
  std::vector<std::vector<int>> added_by_first_byte_;  // indices into added_, per first byte
  std::unordered_map<int, size_t> added_by_id_;          // id -> index into added_
  std::unordered_map<std::string, int> added_ids_;       // content -> id
  bool byte_level_ = false;
};

// Streaming decode: feed ids one at a time and get text only once it is complete UTF-8 and
// settled (as tokenizers' DecodeStream does, by decoding a short window of recent ids).
// `context`: ids already shown (a prompt's last few), decoded together with the new ones so that
// the text continues them: a decoder that trims the start of a text (SentencePiece's Strip of the
// prepended space) would otherwise drop the space before the first new word.
class DecodeStream {
 public:
  DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens, std::vector<int> context = {});
  std::string push(int id);

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int> ids_;
  size_t prefix_ = 0, read_ = 0;
};

}  // namespace crossmoe
