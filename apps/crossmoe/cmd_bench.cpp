// crossmoe bench MODEL: prefill and decode speed, and decode against the memory-bandwidth limit.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include "commands.hpp"
#include "memory_budget_options.hpp"
#include "kernels/bandwidth.hpp"
#include "kernels/kernels.hpp"
#include "runtime/forward.hpp"
#include "runtime/model_files.hpp"
#include "util/error.hpp"
#include "util/progress.hpp"

namespace crossmoe::cli {

namespace {

struct BenchArgs {
  std::string model;
  std::string prompt_file;  // real text for the prompts (routing as on real input), else random tokens
  int prompt_tokens = 128, gen_tokens = 32, runs = 5;
  int batch = 1;  // > 1: also decode this many sequences together
  bool json = false;
  MemoryBudgetArgs memory;
};

struct Summary {
  double min, median, max;
};
Summary summarise(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v.front(), v[v.size() / 2], v.back()};
}

// Aggregate decode tokens/s of `sequences` sequences stepped together through one BatchSession,
// each after its own random prompt (prefill not timed).
double batch_decode_rate(const Model& model, int sequences, const BenchArgs& a, std::mt19937& rng) {
  const ModelConfig& c = model.config();
  constexpr int kBlock = 16;
  const int blocks_each = (a.prompt_tokens + a.gen_tokens + kBlock) / kBlock;
  BatchSession batch(model, kBlock, sequences * blocks_each, std::max(128, sequences));
  std::uniform_int_distribution<int> token(0, c.vocab_size - 1);
  std::vector<int> ids(sequences), next(sequences);
  std::vector<std::vector<float>> logits(sequences, std::vector<float>(c.vocab_size));
  const auto pick = [&](int s) { return int(std::max_element(logits[s].begin(), logits[s].end()) - logits[s].begin()); };
  for (int s = 0; s < sequences; ++s) {
    ids[s] = batch.open();
    std::vector<int> prompt(a.prompt_tokens);
    for (int& t : prompt) t = token(rng);
    for (int start = 0; start < a.prompt_tokens; start += batch.chunk()) {
      const int n = std::min(batch.chunk(), a.prompt_tokens - start);
      batch.step({{ids[s], prompt.data() + start, n, start + n == a.prompt_tokens ? logits[s].data() : nullptr}});
    }
    next[s] = pick(s);
  }
  Stopwatch clock;
  std::vector<StepPiece> pieces(sequences);
  for (int i = 0; i < a.gen_tokens; ++i) {
    for (int s = 0; s < sequences; ++s) pieces[s] = {ids[s], &next[s], 1, logits[s].data()};
    batch.step(pieces);
    for (int s = 0; s < sequences; ++s) next[s] = pick(s);
  }
  return double(sequences) * a.gen_tokens / clock.seconds();
}

// The prompts of the timed runs (the warm-up uses the first): random tokens, or consecutive
// windows of --prompt-file's tokens, so that a trained model routes as it does on real text.
std::vector<std::vector<int>> bench_prompts(const BenchArgs& a, const ModelConfig& c, std::mt19937& rng) {
  std::vector<std::vector<int>> prompts(size_t(a.runs), std::vector<int>(size_t(a.prompt_tokens)));
  if (a.prompt_file.empty()) {
    std::uniform_int_distribution<int> token(0, c.vocab_size - 1);
    for (int& t : prompts[0]) t = token(rng);
    std::fill(prompts.begin() + 1, prompts.end(), prompts[0]);  // the same prompt every run
    return prompts;
  }
  require(!std::filesystem::is_directory(a.prompt_file), "--prompt-file " + a.prompt_file + ": is a directory");
  std::ifstream in(a.prompt_file, std::ios::binary);
  require(in.good(), "--prompt-file " + a.prompt_file + ": cannot open it");
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<int> tokens = require_model_tokenizer(a.model, "--prompt-file").encode(text.str());
  const size_t needed = size_t(a.runs) * size_t(a.prompt_tokens);
  require(tokens.size() >= needed, "--prompt-file " + a.prompt_file + ": " + std::to_string(tokens.size()) +
                                       " tokens, fewer than --runs x --prompt-tokens = " + std::to_string(needed));
  for (size_t r = 0; r < prompts.size(); ++r)
    std::copy_n(tokens.begin() + std::ptrdiff_t(r * size_t(a.prompt_tokens)), a.prompt_tokens, prompts[r].begin());
  return prompts;
}

// User + system CPU seconds of the whole process (compute and I/O threads) so far.
double process_cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void run_bench(const BenchArgs& a) {
  const Model model(a.model, a.memory.resolve());
  ExpertCache* cache = model.expert_cache();
  ExpertCacheStats decode_cache;  // over the timed decodes only
  const ModelConfig& c = model.config();
  require(int64_t(a.prompt_tokens) + a.gen_tokens < c.max_position_embeddings,
          "--prompt-tokens " + std::to_string(a.prompt_tokens) + " + --gen-tokens " + std::to_string(a.gen_tokens) +
              " do not fit the model's context of " + std::to_string(c.max_position_embeddings) +
              " tokens (max_position_embeddings in config.json)");
  std::mt19937 rng(42);
  const std::vector<std::vector<int>> prompts = bench_prompts(a, c, rng);
  InferenceSession session(model, a.prompt_tokens + a.gen_tokens + 1);

  // Warm-up: page the weights in and settle the threads.
  session.forward(prompts[0]);
  // The disk's direct-I/O read bandwidth over the experts' bytes, one request in flight and as
  // many as the cache keeps in flight (different bytes each, so that no cache below serves the
  // second from the first): the limit that misses run against.
  ReadProbe disk1, disk;
  if (cache) {
    const uint64_t probe_bytes = std::min<uint64_t>(uint64_t(512) << 20, cache->plan().routed_bytes / 2);
    disk1 = cache->probe_reads(1, probe_bytes, 0);
    disk = cache->probe_reads(cache->io_depth(), probe_bytes, probe_bytes);
    cache->reset_stats();
  }
  // The machine's bandwidth drifts (shared hosts), so it is measured right after every decode
  // run and each run is held against its own measurement.
  // Decoded token i (from 0) sits at position prompt + i and attends to prompt + i + 1 positions:
  // the KV cache it reads grows through the run, so the bytes per token count its mean.
  const double decode_context = a.prompt_tokens + (a.gen_tokens + 1) / 2.0;
  const double bytes = model.bytes_per_token(decode_context);
  const double weight_bytes = model.weight_bytes_per_token(), kv_bytes = model.kv_bytes_read(decode_context);
  std::vector<double> prefill, decode, bandwidth, fraction;
  uint64_t peak_rss = 0;  // of the model runs, without the bandwidth probe's buffer (kept between runs)
  double decode_cpu_seconds = 0;  // the process's CPU time in the timed decodes: the work, whatever the load
  for (int r = 0; r < a.runs; ++r) {
    session.reset();
    Stopwatch p;
    const std::vector<float>* logits = &session.forward(prompts[size_t(r)]);
    prefill.push_back(a.prompt_tokens / p.seconds());
    const ExpertCacheStats before = cache ? cache->stats() : ExpertCacheStats();
    if (cache) cache->note("decode");
    const double cpu_before = process_cpu_seconds();
    Stopwatch d;
    for (int i = 0; i < a.gen_tokens; ++i) {
      const int next = int(std::max_element(logits->begin(), logits->end()) - logits->begin());
      logits = &session.forward({next});
    }
    decode.push_back(a.gen_tokens / d.seconds());
    decode_cpu_seconds += process_cpu_seconds() - cpu_before;
    if (cache) cache->note("decode end");
    if (cache) decode_cache += cache->stats() - before;
    peak_rss = std::max(peak_rss, peak_resident_bytes() - uint64_t(kernels::read_bandwidth_buffer_bytes()));
    bandwidth.push_back(kernels::measure_read_bandwidth(size_t(512) << 20, 3));
    reset_peak_resident();
    fraction.push_back(decode.back() * bytes / bandwidth.back());
    log_info("run " + std::to_string(r + 1) + "/" + std::to_string(a.runs) + ": prefill " +
             std::to_string(int(prefill.back())) + " tok/s, decode " + std::to_string(decode.back()).substr(0, 6) + " tok/s, bandwidth " +
             std::to_string(bandwidth.back() / 1e9).substr(0, 5) + " GB/s");
  }
  const Summary ps = summarise(prefill), ds = summarise(decode), bw = summarise(bandwidth), fr = summarise(fraction);
  // Batch N against batch 1, alternating run by run so that both see the same machine.
  std::vector<double> single, batched, ratio;
  for (int r = 0; a.batch > 1 && r < a.runs; ++r) {
    single.push_back(batch_decode_rate(model, 1, a, rng));
    batched.push_back(batch_decode_rate(model, a.batch, a, rng));
    ratio.push_back(batched.back() / single.back());
    log_info("run " + std::to_string(r + 1) + "/" + std::to_string(a.runs) + ": batch 1 " +
             std::to_string(single.back()).substr(0, 7) + " tok/s, batch " + std::to_string(a.batch) + " " +
             std::to_string(batched.back()).substr(0, 7) + " tok/s");
  }
  if (a.json) {
    std::printf(
        "{\"model\": \"%s\", \"isa\": \"%s\", \"prompt_tokens\": %d, \"gen_tokens\": %d, \"runs\": %d, "
        "\"prefill_tok_s\": {\"min\": %.2f, \"median\": %.2f, \"max\": %.2f}, "
        "\"decode_tok_s\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}, \"bytes_per_token\": %.0f, "
        "\"weight_bytes_per_token\": %.0f, \"kv_bytes_per_token\": %.0f, \"decode_context\": %.1f, "
        "\"read_bandwidth_gb_s\": {\"min\": %.2f, \"median\": %.2f, \"max\": %.2f}, "
        "\"decode_fraction_of_limit\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}, "
        "\"decode_cpu_s_per_token\": %.6f}\n",
        a.model.c_str(), kernels::isa_name(kernels::active_isa()).c_str(), a.prompt_tokens, a.gen_tokens, a.runs,
        ps.min, ps.median, ps.max, ds.min, ds.median, ds.max, bytes, weight_bytes, kv_bytes, decode_context, bw.min / 1e9, bw.median / 1e9, bw.max / 1e9,
        fr.min, fr.median, fr.max, decode_cpu_seconds / (double(a.runs) * a.gen_tokens));
    if (cache) {
      const ExpertCacheStats& e = decode_cache;
      const double tokens = double(a.runs) * a.gen_tokens;
      std::printf("{\"memory_budget_bytes\": %llu, \"cache_experts\": %lld, \"routed_experts\": %lld, "
                  "\"expert_bytes\": %llu, \"eviction\": \"%s\", \"prefetch\": %s, \"direct_io\": %s, "
                  "\"decode_hits\": %lld, \"decode_misses\": %lld, \"decode_hit_rate\": %.4f, "
                  "\"decode_bytes_read_per_token\": %.0f, \"decode_stall_s_per_token\": %.6f, "
                  "\"decode_stall_ahead_s_per_token\": %.6f, \"decode_io_busy_s_per_token\": %.6f, "
                  "\"decode_prefetch_reads\": %lld, \"prefetch_accuracy\": %.4f, \"peak_rss_bytes\": %llu, "
                  "\"io_depth\": %d, \"peak_reads_in_flight\": %d, \"disk_probe_bytes\": %llu, "
                  "\"disk_read_gb_s_depth1\": %.3f, \"disk_read_gb_s_io_depth\": %.3f}\n",
                  (unsigned long long)cache->plan().budget_bytes, (long long)cache->slots(),
                  (long long)cache->plan().experts, (unsigned long long)cache->plan().expert_bytes,
                  to_string(a.memory.resolve().policy).c_str(), cache->prefetching() ? "true" : "false",
                  cache->direct_io() ? "true" : "false", (long long)e.hits, (long long)e.misses, e.hit_rate(),
                  double(e.bytes_read) / tokens, e.stall_seconds / tokens, e.stall_ahead_seconds / tokens,
                  e.io_busy_seconds / tokens, (long long)e.prefetch_reads,
                  e.prefetch_accuracy(), (unsigned long long)peak_rss, cache->io_depth(), cache->peak_reads_in_flight(),
                  (unsigned long long)disk.bytes, disk1.bytes_per_second() / 1e9, disk.bytes_per_second() / 1e9);
    }
    if (a.batch > 1) {
      const Summary s1 = summarise(single), sn = summarise(batched), q = summarise(ratio);
      std::printf("{\"batch\": %d, \"batch1_decode_tok_s\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}, "
                  "\"batch_decode_tok_s\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}, "
                  "\"batch_ratio\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}}\n",
                  a.batch, s1.min, s1.median, s1.max, sn.min, sn.median, sn.max, q.min, q.median, q.max);
    }
    return;
  }
  std::printf("model            %s  (kernels: %s, %d runs)\n", a.model.c_str(),
              kernels::isa_name(kernels::active_isa()).c_str(), a.runs);
  std::printf("prefill          %d tokens: min %.1f  median %.1f  max %.1f tokens/s\n", a.prompt_tokens, ps.min,
              ps.median, ps.max);
  std::printf("decode           %d tokens: min %.2f  median %.2f  max %.2f tokens/s\n", a.gen_tokens, ds.min,
              ds.median, ds.max);
  std::printf("bytes / token    %.1f MB read per decoded token: %.1f MB of weights, %.1f MB of KV cache at a mean "
              "context of %.1f positions\n",
              bytes / 1e6, weight_bytes / 1e6, kv_bytes / 1e6, decode_context);
  std::printf("read bandwidth   min %.2f  median %.2f  max %.2f GB/s (measured after each run)\n", bw.min / 1e9,
              bw.median / 1e9, bw.max / 1e9);
  std::printf("decode / limit   min %.1f%%  median %.1f%%  max %.1f%%  (tokens/s x bytes/token / bandwidth, per run)\n",
              100 * fr.min, 100 * fr.median, 100 * fr.max);
  if (cache) {
    const ExpertCacheStats& e = decode_cache;
    const double tokens = double(a.runs) * a.gen_tokens;
    std::printf("expert cache     %lld of %lld routed experts (%s budget, %s eviction, prefetch %s, %s)\n",
                (long long)cache->slots(), (long long)cache->plan().experts,
                human_bytes(double(cache->plan().budget_bytes)).c_str(), to_string(a.memory.resolve().policy).c_str(),
                cache->prefetching() ? "on" : "off", cache->direct_io() ? "direct I/O" : "buffered I/O");
    std::printf("decode cache     %lld hits, %lld misses (%.1f%% hits), %s read and %.2f ms stalled on I/O per token\n",
                (long long)e.hits, (long long)e.misses, 100 * e.hit_rate(), human_bytes(double(e.bytes_read) / tokens).c_str(),
                1e3 * e.stall_seconds / tokens);
    std::printf("decode I/O       reads in flight %.2f ms per token, %.2f ms of the stall on reads ahead not yet arrived; "
                "%.2f ms of CPU per token (all threads)\n",
                1e3 * e.io_busy_seconds / tokens, 1e3 * e.stall_ahead_seconds / tokens, 1e3 * decode_cpu_seconds / tokens);
    std::printf("disk reads       %.2f GB/s at depth 1, %.2f GB/s at depth %d (%s over %s of the experts, at most %d "
                "reads in flight in the timed runs)\n",
                disk1.bytes_per_second() / 1e9, disk.bytes_per_second() / 1e9, cache->io_depth(),
                cache->direct_io() ? "direct I/O" : "buffered I/O", human_bytes(double(disk.bytes)).c_str(),
                cache->peak_reads_in_flight());
    if (cache->prefetching())
      std::printf("prefetch         %lld experts read ahead, accuracy %.1f%% (of the experts layers used, those named ahead)\n",
                  (long long)e.prefetch_reads, 100 * e.prefetch_accuracy());
  }
  std::printf("peak RSS         %s (load and model runs; the bandwidth probe's buffer left out)\n",
              human_bytes(double(peak_rss)).c_str());
  if (a.batch > 1) {
    const Summary s1 = summarise(single), sn = summarise(batched), q = summarise(ratio);
    std::printf("batch 1 decode   min %.2f  median %.2f  max %.2f tokens/s (batched session, one sequence)\n", s1.min,
                s1.median, s1.max);
    std::printf("batch %-3d decode min %.2f  median %.2f  max %.2f tokens/s in all\n", a.batch, sn.min, sn.median,
                sn.max);
    std::printf("batch %d / 1     min %.2fx  median %.2fx  max %.2fx  (per run, same run)\n", a.batch, q.min, q.median,
                q.max);
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prefill and decode speed against the bandwidth limit");
  cmd->add_option("model", a->model, "Model directory or GGUF file")->required();
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "Prefill length")->capture_default_str()->check(positive());
  cmd->add_option("--prompt-file", a->prompt_file,
                  "Text whose tokens make the prompts (run r prefills the r-th window of --prompt-tokens tokens), "
                  "so that a trained model routes as on real input; default: one random prompt")
      ->check(CLI::ExistingFile);
  cmd->add_option("--gen-tokens", a->gen_tokens, "Decoded tokens per run")->capture_default_str()->check(positive());
  cmd->add_option("--runs", a->runs, "Timed runs")->capture_default_str()->check(positive());
  cmd->add_option("--batch", a->batch,
                  "Also decode this many sequences together in one batched session and report their "
                  "aggregate tokens/s beside one sequence's, measured alternately in the same run")
      ->capture_default_str()
      ->check(positive());
  a->memory.add_to(*cmd);
  cmd->add_flag("--json", a->json, "Print one JSON object (a second one with the batch figures when --batch > 1)");
  add_threads_option(*cmd);
  cmd->callback([a] { run_bench(*a); });
}

}  // namespace crossmoe::cli
