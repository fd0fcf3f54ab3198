// Long-context prefill: time and memory as the prompt grows. For each length, a fresh session
// whose KV cache holds exactly that many tokens prefills random tokens in chunks of 128.
// Usage: bench_long_context MODEL_DIR [LENGTH...]   (default 16384 32768 65536 131072)
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "runtime/forward.hpp"
#include "util/progress.hpp"

using namespace crossmoe;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_long_context MODEL_DIR [LENGTH...]\n");
    return 2;
  }
  std::vector<int> lengths;
  for (int i = 2; i < argc; ++i) lengths.push_back(std::atoi(argv[i]));
  if (lengths.empty()) lengths = {16384, 32768, 65536, 131072};
  try {
    const Model model(argv[1]);
    const ModelConfig& c = model.config();
    std::printf("model %s: %d layers, %d kv heads of %d, weights %.1f MB\n", argv[1], c.num_layers, c.num_kv_heads,
                c.head_dim, model.checkpoint().total_bytes() / 1e6);
    std::printf("%8s %10s %12s %10s %12s\n", "tokens", "seconds", "tokens/s", "KV MB", "peak RSS MB");
    std::mt19937 rng(1);
    for (int n : lengths) {
      std::vector<int> prompt(static_cast<size_t>(n));
      for (int& t : prompt) t = int(rng() % uint32_t(c.vocab_size));
      InferenceSession session(model, n, 128);
      Stopwatch watch;
      session.forward(prompt);
      const double s = watch.seconds();
      rusage usage{};
      getrusage(RUSAGE_SELF, &usage);
      const double kv = double(KvPool::bytes_per_position(c)) * n / 1e6;
      std::printf("%8d %10.1f %12.1f %10.1f %12.1f\n", n, s, n / s, kv, usage.ru_maxrss / 1e3);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
