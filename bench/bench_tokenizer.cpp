// Encode throughput of a tokenizer.json on text files, one thread: MB/s per file, best of
// several runs, plus the id count and an FNV-1a hash of the ids so that the output can be
// compared with another implementation's (bench/tokenizer_hf.py prints the same line).
// Usage: bench_tokenizer TOKENIZER_JSON FILE... [--runs N]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"
#include "util/progress.hpp"

using namespace crossmoe;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON FILE... [--runs N]\n");
    return 2;
  }
  int runs = 3;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = std::atoi(argv[++i]);
    else files.push_back(argv[i]);
  }
  try {
    Tokenizer tokenizer = Tokenizer::load(argv[1]);
    for (const auto& file : files) {
      std::ifstream in(file, std::ios::binary);
      const std::string text((std::istreambuf_iterator<char>(in)), {});
      std::vector<int> ids;
      double best = 1e30;
      for (int r = 0; r < runs; ++r) {
        Tokenizer fresh = Tokenizer::load(argv[1]);  // a cold word cache every run, as for new text
        Stopwatch watch;
        ids = fresh.encode(text);
        best = std::min(best, watch.seconds());
      }
      uint64_t hash = 1469598103934665603ull;
      for (int id : ids) hash = (hash ^ uint64_t(uint32_t(id))) * 1099511628211ull;
      std::printf("crossmoe %-40s %8.2f MB/s  %9zu ids  fnv %016llx\n", file.c_str(), text.size() / best / 1e6,
                  ids.size(), (unsigned long long)hash);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
