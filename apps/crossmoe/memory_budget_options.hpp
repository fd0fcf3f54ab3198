#pragma once
// --memory-budget, --eviction, --prefetch and --io-depth, shared by generate, chat, bench and serve, and the
// lines that report what the expert cache did.
#include <CLI/CLI.hpp>
#include <string>

#include "runtime/expert_cache.hpp"

namespace crossmoe::cli {

// Checks --memory-budget's text (parse_memory_budget) at parse time: a bad one exits 2.
CLI::Validator memory_budget_check();

struct MemoryBudgetArgs {
  std::string budget, eviction = "next-use", prefetch = "on";
  int io_depth = ExpertCacheOptions().io_depth;
  void add_to(CLI::App& cmd);
  ExpertCacheOptions resolve() const;  // no budget set: all weights in memory
};

// One line: hits and misses, bytes read (per token when tokens > 0), time stalled on I/O,
// prefetch accuracy, and the process's peak resident memory.
std::string expert_cache_summary(const ExpertCache& cache, int64_t tokens);
// The process's peak resident memory (VmHWM), and as text: "peak RSS 1.23 GB". reset_peak_resident
// starts the peak again from now (bench: so that its bandwidth probe's buffer is not counted).
uint64_t peak_resident_bytes();
void reset_peak_resident();
std::string peak_rss_text();
std::string human_bytes(double bytes);  // "1.23 GB"

}  // namespace crossmoe::cli
