#include "memory_budget_options.hpp"

#include <sys/resource.h>

#include <cstdio>
#include <fstream>

#include "option_checks.hpp"
#include "util/error.hpp"

namespace crossmoe::cli {

CLI::Validator memory_budget_check() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          parse_memory_budget(text);
        } catch (const UsageError& e) {
          // The option library names the option already.
          const std::string what = e.what(), prefix = "--memory-budget ";
          return what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what;
        }
        return {};
      },
      "BYTES|PERCENT");
}

void MemoryBudgetArgs::add_to(CLI::App& cmd) {
  cmd.add_option("--memory-budget", budget,
                 "Memory for the routed experts, in bytes (512M, 2G, 1500000000) or as a percentage of their "
                 "size (25%): they are read from the weight files on demand into a cache of this size with "
                 "direct I/O; the rest of the model stays in memory. Default: everything in memory")
      ->check(memory_budget_check());
  cmd.add_option("--eviction", eviction,
                 "With --memory-budget: which expert leaves the cache, lru (least recently used), frequency "
                 "(least often used, counts fading over time) or next-use (the one expected to be used again "
                 "last: from which layers can route to it, how often it was chosen, and the next layer's "
                 "experts when prefetch names them)")
      ->capture_default_str()
      ->check(CLI::IsMember({"lru", "frequency", "next-use"}));
  cmd.add_option("--prefetch", prefetch,
                 "With --memory-budget: read the next layer's experts while this layer computes "
                 "(exact for pre-gated models, the next router on this layer's input otherwise)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  cmd.add_option("--io-depth", io_depth,
                 "With --memory-budget: expert reads in flight at once (I/O threads, each reading 1 MiB at a "
                 "time); NVMe drives read several times faster at 8-32 than at 1")
      ->capture_default_str()
      ->check(whole_number(1, 256));
}

ExpertCacheOptions MemoryBudgetArgs::resolve() const {
  ExpertCacheOptions o;
  if (!budget.empty()) o.budget = parse_memory_budget(budget);
  o.policy = parse_eviction_policy(eviction);
  o.prefetch = prefetch == "on";
  o.io_depth = io_depth;
  return o;
}

std::string human_bytes(double n) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (n >= 1000 && i < 4) n /= 1000, ++i;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %sB", n, prefixes[i]);
  return buf;
}

uint64_t peak_resident_bytes() {
  // VmHWM, which reset_peak_resident() can lower (getrusage's ru_maxrss cannot be reset).
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;  // "VmHWM:   1234 kB"
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return uint64_t(usage.ru_maxrss) * 1024;  // KiB on Linux
}

void reset_peak_resident() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";  // resets VmHWM to the current RSS (Linux 4.0+)
}

std::string peak_rss_text() { return "peak RSS " + human_bytes(double(peak_resident_bytes())); }

std::string expert_cache_summary(const ExpertCache& cache, int64_t tokens) {
  const ExpertCacheStats s = cache.stats();
  char line[512];
  std::snprintf(line, sizeof line,
                "expert cache: %lld of %lld experts (%s), %s, %d reads in flight at most; %lld hits, %lld misses (%.1f%% hits), %s read%s, "
                "%.3f s stalled on I/O",
                (long long)cache.slots(), (long long)cache.plan().experts,
                human_bytes(double(cache.slots()) * double(cache.plan().expert_bytes)).c_str(),
                cache.direct_io() ? "direct I/O" : "buffered I/O (the file system refused O_DIRECT)",
                cache.io_depth(), (long long)s.hits, (long long)s.misses, 100.0 * s.hit_rate(), human_bytes(double(s.bytes_read)).c_str(),
                tokens > 0 ? (" (" + human_bytes(double(s.bytes_read) / double(tokens)) + " per token)").c_str() : "",
                s.stall_seconds);
  std::string text = line;
  if (cache.prefetching()) {
    std::snprintf(line, sizeof line, ", %lld read ahead, prefetch accuracy %.1f%% (%lld of %lld used experts named)",
                  (long long)s.prefetch_reads, 100.0 * s.prefetch_accuracy(), (long long)s.predicted_right,
                  (long long)s.predicted);
    text += line;
  }
  return text + "; " + peak_rss_text();
}

}  // namespace crossmoe::cli
