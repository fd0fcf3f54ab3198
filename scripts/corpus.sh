#!/usr/bin/env bash
# A pre-training corpus of real English (and a little Chinese) from what Debian packages ship:
# installs the packages, cleans and deduplicates their text (scripts/corpus_build.py), trains a
# byte-level BPE tokenizer on it and tokenizes it into train.bin / val.bin, split by document.
#   bash scripts/corpus.sh [OUT=build/corpus] [VOCAB=16384]
# Prints the mix (documents, words, characters per source) and the token counts; the same
# packages give the same counts on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/corpus}
vocab=${2:-16384}
packages=(python3-minimal bible-kjv dict-gcide wordnet-base python3-doc linux-doc-6.1 fortunes fortunes-min fortunes-zh
          bash-doc gnu-standards perl-doc postgresql-doc-15 git-doc gimp-help-en sqlite3-doc apache2-doc
          debian-reference-en octave-doc maxima-doc cmake-doc python-django-doc)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x build/crossmoe ] || bash scripts/setup.sh
mkdir -p "$out"
python3 scripts/corpus_build.py "$out/corpus.jsonl"
# The tokenizer learns from the documents' text (the jsonl's strings, unescaped).
python3 -c 'import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        out.write(json.loads(line)["text"] + "\n\n")' "$out/corpus.jsonl" "$out/corpus.txt"
./build/crossmoe tokenizer train "$out/corpus.txt" --vocab-size "$vocab" -o "$out/tokenizer" --force
./build/crossmoe data prepare --tokenizer "$out/tokenizer/tokenizer.json" -o "$out/data" --text "$out/corpus.jsonl" --force
