#!/usr/bin/env python3
"""Tokenizes texts with llama.cpp's llama-tokenize and with `crossmoe tokenize` on one GGUF file
and reports where the ids differ (no BOS, special tokens not parsed: the texts hold none).

Usage: tokenize_vs_llamacpp.py LLAMA_TOKENIZE CROSSMOE FILE.gguf TEXTS.inp
TEXTS.inp holds texts separated by "\\n__ggml_vocab_test__\\n", as llama.cpp's models/*.inp do.
"""
import json
import subprocess
import sys
import tempfile


def main():
    llama_tokenize, crossmoe, gguf, inputs = sys.argv[1:5]
    texts = open(inputs, encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
    same = tokens = 0
    for i, text in enumerate(texts):
        if text == "":
            continue  # an empty argument is no text for crossmoe tokenize
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt") as f:
            f.write(text)
            f.flush()
            out = subprocess.run([llama_tokenize, "-m", gguf, "-f", f.name, "--ids", "--no-escape", "--no-bos",
                                  "--no-parse-special", "--log-disable"], capture_output=True, text=True, check=True)
        reference = json.loads(out.stdout.strip().splitlines()[-1])
        ours = json.loads(subprocess.run([crossmoe, "tokenize", gguf, text, "--json"], capture_output=True, text=True,
                                         check=True).stdout)["ids"]
        tokens += len(reference)
        if ours == reference:
            same += 1
        else:
            print(f"text {i} {text!r}:\n  llama.cpp {reference}\n  crossmoe  {ours}")
    print(f"{same} of {sum(1 for t in texts if t)} texts give the same ids ({tokens} tokens by llama.cpp)")
    sys.exit(0 if same == sum(1 for t in texts if t) else 1)


if __name__ == "__main__":
    main()
