#!/usr/bin/env python3
"""Hugging Face tokenizers' side of bench_tokenizer: same files, one thread, same output line.

    RAYON_NUM_THREADS=1 python3 bench/tokenizer_hf.py TOKENIZER_JSON FILE... [--runs N]
"""
import sys, time
from tokenizers import Tokenizer

args = sys.argv[1:]
runs = 3
if "--runs" in args:
    i = args.index("--runs"); runs = int(args[i + 1]); del args[i:i + 2]
path, files = args[0], args[1:]
for f in files:
    text = open(f, encoding="utf-8").read()
    nbytes = len(text.encode("utf-8"))
    best = 1e30
    for _ in range(runs):
        tok = Tokenizer.from_file(path)  # a cold cache every run
        t = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        best = min(best, time.perf_counter() - t)
    h = 1469598103934665603
    for i in ids:
        h = ((h ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    print(f"hf       {f:40s} {nbytes / best / 1e6:8.2f} MB/s  {len(ids):9d} ids  fnv {h:016x}")
