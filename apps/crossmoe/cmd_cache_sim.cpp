// crossmoe cache-sim TRACE: replays a routing trace (generate --trace) against expert caches of
// several sizes under each eviction policy and Belady's optimum (runtime/cache_sim).
#include <algorithm>
#include <cstdio>
#include <memory>
#include <sstream>

#include "commands.hpp"
#include "runtime/cache_sim.hpp"
#include "util/error.hpp"

namespace crossmoe::cli {

namespace {

struct CacheSimArgs {
  std::string trace;
  std::vector<int> slots;
  bool next_known = false;
  int from_position = 0;
  bool json = false;
};

void run_cache_sim(const CacheSimArgs& a) {
  const RoutingTrace trace = read_routing_trace(a.trace);
  std::vector<int> sizes = a.slots;
  if (sizes.empty())  // 10%, 25% and 50% of the experts the trace uses, never below one step
    for (double f : {0.10, 0.25, 0.50}) sizes.push_back(std::max(int(trace.widest_step), int(f * trace.experts)));
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  for (int s : sizes)
    if (s < int(trace.widest_step))
      throw UsageError("--slots " + std::to_string(s) + ": a step of " + a.trace + " uses " +
                       std::to_string(trace.widest_step) + " experts at once; give at least that many");
  const SimulateOptions options{a.next_known, a.from_position};
  if (!a.json)
    std::printf("trace %s: %lld expert uses of %d experts in %zu steps (token x layer)%s%s\n%8s %10s %10s %10s %10s\n",
                a.trace.c_str(), (long long)trace.accesses, trace.experts, trace.steps.size(),
                a.next_known ? ", the next layer's experts known" : "",
                a.from_position > 0 ? (", counted from position " + std::to_string(a.from_position)).c_str() : "",
                "slots", "lru", "frequency", "next-use", "belady");
  for (int s : sizes) {
    const SimulatedCache lru = simulate_cache(trace, s, EvictionPolicy::Lru, options);
    const SimulatedCache freq = simulate_cache(trace, s, EvictionPolicy::Frequency, options);
    const SimulatedCache next = simulate_cache(trace, s, EvictionPolicy::NextUse, options);
    const SimulatedCache opt = simulate_cache(trace, s, std::nullopt, options);
    if (a.json)
      std::printf("{\"slots\": %d, \"experts\": %d, \"accesses\": %lld, \"hit_rate\": {\"lru\": %.4f, \"frequency\": %.4f, "
                  "\"next-use\": %.4f, \"belady\": %.4f}}\n",
                  s, trace.experts, (long long)trace.accesses, lru.hit_rate(), freq.hit_rate(), next.hit_rate(),
                  opt.hit_rate());
    else
      std::printf("%8d %9.1f%% %9.1f%% %9.1f%% %9.1f%%\n", s, 100 * lru.hit_rate(), 100 * freq.hit_rate(),
                  100 * next.hit_rate(), 100 * opt.hit_rate());
  }
}

}  // namespace

void add_cache_sim(CLI::App& app) {
  auto a = std::make_shared<CacheSimArgs>();
  CLI::App* cmd = app.add_subcommand(
      "cache-sim",
      "Replay a routing trace (generate --trace) against expert caches of several sizes: hit rates of the "
      "lru, frequency and next-use eviction policies beside Belady's optimum (evict the expert used again last)");
  cmd->add_option("trace", a->trace, "Routing trace, JSON lines as generate --trace writes them")->required();
  cmd->add_option("--slots", a->slots, "Cache sizes in experts, comma-separated (default: 10%, 25%, 50% of the "
                                       "experts the trace uses)")
      ->delimiter(',')
      ->check(positive());
  cmd->add_flag("--next-known", a->next_known,
                "Tell the policies each layer's experts one layer ahead, as pre-gated prefetch does (they go last)");
  cmd->add_option("--from-position", a->from_position,
                  "Count hits and misses from this token position on; the steps before only fill the cache "
                  "(the prompt of the traced run, to see the decode alone)")
      ->check(whole_number(0));
  cmd->add_flag("--json", a->json, "One JSON object per cache size");
  cmd->callback([a] { run_cache_sim(*a); });
}

}  // namespace crossmoe::cli
