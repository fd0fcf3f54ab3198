// Decode and prefill speed of several formats of one model (bf16 and `crossmoe quantize`
// outputs), measured in the same process with the models taking turns in every round, so that
// the machine's drift hits them alike. Ratios are per round against the first model, then the
// median. Usage: bench_quant [--rounds N] [--tokens N] [--prompt N] BASELINE_MODEL MODEL...
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kernels/bandwidth.hpp"
#include "kernels/kernels.hpp"
#include "runtime/forward.hpp"
#include "util/progress.hpp"

using namespace crossmoe;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Timing {
  double prefill, decode;  // tokens/s
};

Timing time_model(const Model& model, int prompt_tokens, int gen_tokens) {
  std::vector<int> prompt(prompt_tokens);
  for (int i = 0; i < prompt_tokens; ++i) prompt[i] = (i * 7919 + 13) % model.config().vocab_size;
  InferenceSession session(model, prompt_tokens + gen_tokens + 1);
  Stopwatch p;
  const std::vector<float>* logits = &session.forward(prompt);
  const double prefill = prompt_tokens / p.seconds();
  Stopwatch d;
  for (int i = 0; i < gen_tokens; ++i) {
    const int next = int(std::max_element(logits->begin(), logits->end()) - logits->begin());
    logits = &session.forward({next});
  }
  return {prefill, gen_tokens / d.seconds()};
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, gen_tokens = 32, prompt_tokens = 64;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--rounds" || a == "--tokens" || a == "--prompt") && i + 1 < argc) {
      const int v = std::atoi(argv[++i]);
      if (v <= 0) {
        std::fprintf(stderr, "error: %s takes a positive number\n", a.c_str());
        return 2;
      }
      (a == "--rounds" ? rounds : a == "--tokens" ? gen_tokens : prompt_tokens) = v;
    } else {
      dirs.push_back(a);
    }
  }
  if (dirs.size() < 2) {
    std::fprintf(stderr, "usage: bench_quant [--rounds N] [--tokens N] [--prompt N] BASELINE_MODEL MODEL...\n");
    return 2;
  }
  try {
    std::vector<std::unique_ptr<Model>> models;
    for (const auto& d : dirs) models.push_back(std::make_unique<Model>(d));
    for (const auto& m : models) time_model(*m, 8, 4);  // warm-up: page in, settle threads
    const size_t n = models.size();
    std::vector<std::vector<double>> decode(n), prefill(n), decode_ratio(n), prefill_ratio(n), fraction(n);
    for (int r = 0; r < rounds; ++r) {
      const double bandwidth = kernels::measure_read_bandwidth(size_t(512) << 20, 3);
      std::vector<Timing> t(n);
      for (size_t k = 0; k < n; ++k) t[k] = time_model(*models[k], prompt_tokens, gen_tokens);
      for (size_t k = 0; k < n; ++k) {
        decode[k].push_back(t[k].decode);
        prefill[k].push_back(t[k].prefill);
        decode_ratio[k].push_back(t[k].decode / t[0].decode);
        prefill_ratio[k].push_back(t[k].prefill / t[0].prefill);
        fraction[k].push_back(t[k].decode * models[k]->bytes_per_token() / bandwidth);
      }
      std::fprintf(stderr, "round %d/%d done\n", r + 1, rounds);
    }
    std::printf("kernels %s, %d rounds, decode %d tokens after a %d-token prefill; medians; ratios vs %s\n",
                kernels::isa_name(kernels::active_isa()).c_str(), rounds, gen_tokens, prompt_tokens, dirs[0].c_str());
    std::printf("| model | MB read / token | decode tok/s | decode ratio | prefill tok/s | prefill ratio | decode / bandwidth limit |\n");
    std::printf("|---|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < n; ++k)
      std::printf("| %s | %.1f | %.2f | %.2fx | %.1f | %.2fx | %.1f%% |\n", dirs[k].c_str(),
                  models[k]->bytes_per_token() / 1e6, median(decode[k]), median(decode_ratio[k]), median(prefill[k]),
                  median(prefill_ratio[k]), 100 * median(fraction[k]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
