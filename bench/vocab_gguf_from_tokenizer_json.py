#!/usr/bin/env python3
"""Writes a vocab-only GGUF (tokenizer.ggml.* as llama.cpp's convert_hf_to_gguf.py writes a
byte-level BPE vocabulary) from a Hugging Face tokenizer.json, with llama.cpp's own GGUF writer
(gguf-py), so that llama.cpp's llama-tokenize and crossmoe can be compared on a vocabulary that
llama.cpp ships no test file for (DeepSeek-V3's, tokenizer.ggml.pre "deepseek-v3").

Usage: PYTHONPATH=/path/to/llama.cpp/gguf-py python3 bench/vocab_gguf_from_tokenizer_json.py \
           tokenizer.json PRE OUT.gguf
"""
import json
import sys

import gguf

CONTROL, NORMAL, USER_DEFINED, UNUSED = 3, 1, 4, 5


def main():
    source, pre, out = sys.argv[1:4]
    tj = json.load(open(source, encoding="utf-8"))
    model = tj["model"]
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    size = 1 + max(list(model["vocab"].values()) + list(added))
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, i in model["vocab"].items():
        tokens[i], types[i] = text, NORMAL
    for i, a in added.items():
        tokens[i], types[i] = a["content"], CONTROL if a["special"] else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
