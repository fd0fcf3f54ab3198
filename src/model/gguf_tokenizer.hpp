#pragma once
// A GGUF file's vocabulary (tokenizer.ggml.*) as a tokenizer.json that tokenizer/tokenizer.hpp
// runs, and the inverse for export.
//
// Facts taken from llama.cpp (src/llama-vocab.cpp, convert_hf_to_gguf.py) and Hugging Face's
// conversion of SentencePiece models (transformers' convert_slow_tokenizer.py):
//   - tokenizer.ggml.model "gpt2" is byte-level BPE: tokens, merges "left right", and
//     tokenizer.ggml.pre naming the pre-tokenizer, which llama.cpp runs as a list of regexes, each
//     splitting the pieces the previous ones left (a Sequence of Split pre-tokenizers, matches
//     kept), before bytes map to characters.
//   - tokenizer.ggml.model "llama" is SentencePiece BPE: tokens with scores, byte tokens
//     <0xNN> (type 6) for characters the vocabulary lacks, spaces written as U+2581 and one
//     prepended to the text unless tokenizer.ggml.add_space_prefix is false. Hugging Face runs it
//     as BPE whose merges are every split of a token into two tokens, ranked by the joined token's
//     score (highest first; ties by the joined token's id, then the halves' ids).
//   - token types (llama_token_type): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
//     6 byte.
#include <nlohmann/json.hpp>
#include <optional>

#include "model/config.hpp"
#include "model/gguf.hpp"

namespace crossmoe {

// tokenizer.ggml.* as a tokenizer.json; nullopt for "no_vocab" files and files without tokenizer
// keys. Supported: "llama" (SentencePiece) and "gpt2" (byte-level BPE) with the pre-tokenizers of
// gguf_pre_tokenizer_names(); anything else is an Error naming what is supported.
std::optional<nlohmann::json> gguf_tokenizer_json(const GgufFile& file);
// The tokenizer.ggml.pre values gguf_tokenizer_json reads, comma-separated.
std::string gguf_pre_tokenizer_names();
// The tokenizer_config.json equivalent (chat_template, bos_token, eos_token), empty object when
// the file has none of them.
nlohmann::json gguf_tokenizer_config(const GgufFile& file);
// The inverse: tokenizer.ggml.* for a tokenizer.json, the token list padded to vocab_size with
// unused tokens: "gpt2" for byte-level BPE whose pre-tokenizer llama.cpp names
// (gguf_pre_tokenizer_names), "llama" with scores for SentencePiece-style BPE with byte fallback
// (LLaMA-2, Mistral, Mixtral) whose merges those scores reproduce; anything else is an Error.
// add_bos_token / add_eos_token say what the tokenizer's post-processor puts around a text (a BOS
// before, an EOS after; more, or ids other than config's bos / first eos, are an Error).
void add_gguf_tokenizer_metadata(GgufWriter& writer, const ModelConfig& config, const nlohmann::json& tokenizer_json,
                                 const nlohmann::json& tokenizer_config);

}  // namespace crossmoe
