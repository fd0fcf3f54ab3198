// Routed experts under a memory budget (runtime/expert_cache) against the same model with every
// weight in memory: the logits must be bit for bit the same (each expert computes the same rows
// either way and the sum takes them in one order), for layer-local, Megrez2 (shared pool,
// pre-gated) and ReXMoE (reuse) layouts, budgets down to one token's top-k experts, both eviction
// policies, prefetch on and off, and prefill chunks that choose more experts than the cache holds.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <memory>
#include <thread>

#include "model/init.hpp"
#include "model/safetensors.hpp"
#include "model/tensor_names.hpp"
#include "runtime/cache_sim.hpp"
#include "runtime/expert_cache.hpp"
#include "runtime/forward.hpp"
#include "runtime/gguf_export.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "util/error.hpp"

namespace crossmoe {
namespace {

namespace fs = std::filesystem;

struct ModelDir {
  fs::path dir;
  // expert_width > 0: routed experts of that width (larger experts: many read requests each).
  explicit ModelDir(const std::string& layout, const std::string& name, int expert_width = 0)
      : dir(testing_paths::temp_path("cache_" + name)) {
    ModelConfig c = testing_models::small(layout);
    if (expert_width > 0) {
      if (c.moe.shared_intermediate_size > 0) c.moe.shared_intermediate_size = expert_width;
      c.moe.expert_intermediate_size = expert_width;
    }
    c.finalize();
    InitOptions options;
    options.seed = 5;
    options.norm_noise = 0.2f;
    write_random_model(c, dir, options);
  }
  ~ModelDir() { fs::remove_all(dir); }
};

// Greedy decoding after a prompt that runs as one prefill chunk; every step's logits.
std::vector<std::vector<float>> decode(const Model& model, int new_tokens) {
  std::vector<int> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back((i * 37 + 11) % model.config().vocab_size);
  InferenceSession session(model, 64, 32);
  std::vector<std::vector<float>> out;
  const std::vector<float>* logits = &session.forward(prompt);
  for (int i = 0; i < new_tokens; ++i) {
    out.push_back(*logits);
    const int next = int(std::max_element(logits->begin(), logits->end()) - logits->begin());
    logits = &session.forward({next});
  }
  return out;
}

ExpertCacheOptions budget(const std::string& text, EvictionPolicy policy = EvictionPolicy::Lru, bool prefetch = true) {
  ExpertCacheOptions o;
  o.budget = parse_memory_budget(text);
  o.policy = policy;
  o.prefetch = prefetch;
  return o;
}

// Reads of one page each, `depth` at a time: every expert is many requests.
ExpertCacheOptions in_pages(const std::string& text, int depth, bool prefetch) {
  ExpertCacheOptions o = budget(text, EvictionPolicy::Lru, prefetch);
  o.io_depth = depth;
  o.io_chunk_bytes = 4096;
  return o;
}

TEST(ExpertCache, ParsesBudgets) {
  EXPECT_EQ(parse_memory_budget("1500").bytes, 1500u);
  EXPECT_EQ(parse_memory_budget("2K").bytes, 2048u);
  EXPECT_EQ(parse_memory_budget("1.5M").bytes, 3u << 19);
  EXPECT_EQ(parse_memory_budget("2GiB").bytes, 2ull << 30);
  EXPECT_EQ(parse_memory_budget("3GB").bytes, 3000000000ull);
  EXPECT_EQ(parse_memory_budget("25%").percent, 25.0);
  EXPECT_EQ(parse_memory_budget("12.5%").percent, 12.5);
  EXPECT_EQ(parse_memory_budget("100%").percent, 100.0);
  for (const char* bad : {"", "0", "0%", "abc", "-5", "101%", "12Q", "1e9", "0x10", "%", "1.2.3", " 5", "inf", "0.1"})
    EXPECT_THROW(parse_memory_budget(bad), UsageError) << bad;
  try {
    parse_memory_budget("abc");
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--memory-budget 'abc'"), std::string::npos) << e.what();
  }
}

class SameLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(SameLogits, UnderEveryBudget) {
  const ModelDir m(GetParam(), "same_" + GetParam());
  const std::vector<std::vector<float>> reference = decode(Model(m.dir, WeightResidency::InMemory), 8);
  const Model probe(m.dir, budget("100%"));
  const ExpertCachePlan plan = probe.expert_cache()->plan();
  const std::string one_token = std::to_string(uint64_t(plan.min_slots) * plan.expert_bytes);
  for (const std::string b : {one_token, std::string("50%"), std::string("100%")})
    for (EvictionPolicy policy : {EvictionPolicy::Lru, EvictionPolicy::Frequency, EvictionPolicy::NextUse})
      for (bool prefetch : {false, true}) {
        const Model model(m.dir, budget(b, policy, prefetch));
        ASSERT_TRUE(model.expert_cache());
        EXPECT_EQ(decode(model, 8), reference) << "budget " << b << " " << to_string(policy) << " prefetch " << prefetch;
        const ExpertCacheStats s = model.expert_cache()->stats();
        // Read on demand or ahead: with pre-gated prefetch every step's experts, the first MoE
        // layer's too, may be on their way before the step asks (no miss at all).
        EXPECT_GT(s.misses + s.prefetch_reads, 0);
        if (!prefetch) EXPECT_GT(s.misses, 0);
        EXPECT_EQ(s.bytes_read, (s.misses + s.prefetch_reads) * int64_t(plan.expert_bytes));
        if (b == one_token) EXPECT_EQ(model.expert_cache()->slots(), plan.min_slots);
        if (b == "100%" && !prefetch)  // everything fits: each expert is read once, by its owner's key
          EXPECT_LE(s.misses, plan.experts);
      }
}

INSTANTIATE_TEST_SUITE_P(ExpertCacheLayouts, SameLogits, ::testing::Values("moe", "megrez2", "rexmoe"));

// A GGUF file under a budget: each layer's merged expert tensors (ffn_*_exps) stay in the file
// (no memory for them) and each expert is read from its slice; the logits are those of the same
// file with everything in memory.
TEST(ExpertCache, GgufExpertsAreReadFromTheirSlicesOfTheFile) {
  const ModelDir m("moe", "gguf");
  const fs::path gguf = m.dir / "model.gguf";
  export_gguf(m.dir, gguf);
  const std::vector<std::vector<float>> reference = decode(Model(gguf, WeightResidency::InMemory), 8);
  const ExpertCachePlan plan = Model(gguf, budget("100%")).expert_cache()->plan();
  const ModelConfig c = Model(gguf, WeightResidency::Mapped).config();
  EXPECT_EQ(plan.experts, int64_t(c.num_layers) * c.moe.num_experts);
  EXPECT_EQ(plan.expert_bytes, 3 * uint64_t(c.hidden_size) * uint64_t(c.moe.expert_intermediate_size) * 2) << "BF16";
  for (bool prefetch : {false, true}) {
    const Model model(gguf, budget(std::to_string(uint64_t(plan.min_slots) * plan.expert_bytes), EvictionPolicy::Lru, prefetch));
    EXPECT_EQ(model.expert_cache()->slots(), plan.min_slots);
    EXPECT_EQ(decode(model, 8), reference) << "prefetch " << prefetch;
    const ExpertCacheStats s = model.expert_cache()->stats();
    EXPECT_GT(s.misses + s.prefetch_reads, 0);
    EXPECT_EQ(s.bytes_read, (s.misses + s.prefetch_reads) * int64_t(plan.expert_bytes));
  }
}

// Experts of different sizes, as llama.cpp's mixes store them (Q4_K_M, IQ4_XS, ...: some layers'
// ffn_down_exps with more bits): here the last MoE layer's down projections widened from BF16 to
// F32 (the same values). Every slot holds the largest expert; the logits stay the resident
// model's, and the bytes read are the experts' own.
TEST(ExpertCache, ExpertsOfDifferentSizesShareTheSlots) {
  const ModelDir m("moe", "mixed_sizes");
  const ModelConfig c = Model(m.dir, WeightResidency::InMemory).config();
  int widened_layer = -1;
  for (int l = 0; l < c.num_layers; ++l)
    if (c.layers[l].owns_experts) widened_layer = l;
  ASSERT_GE(widened_layer, 0);
  {
    const fs::path file = m.dir / "model.safetensors", rewritten = m.dir / "widened.safetensors";
    std::vector<TensorToWrite> tensors;
    std::vector<std::vector<float>> widened;
    {
      SafetensorsFile in(file);
      in.load_into_memory();
      widened.reserve(in.tensors().size());
      for (const auto& [name, t] : in.tensors()) {
        bool down = false;
        for (int j = 0; j < c.moe.num_experts; ++j) down |= name == tensor_names::expert(c, widened_layer, j, Proj::Down);
        if (!down) {
          tensors.push_back({name, t.dtype, t.shape, t.data});
          continue;
        }
        ASSERT_EQ(t.dtype, DType::BF16);
        std::vector<float>& f = widened.emplace_back(size_t(t.numel()));
        const auto* h = reinterpret_cast<const uint16_t*>(t.data);
        for (size_t i = 0; i < f.size(); ++i) f[i] = bf16_to_f32(h[i]);
        tensors.push_back({name, DType::F32, t.shape, f.data()});
      }
      write_safetensors(rewritten, tensors);
    }
    fs::rename(rewritten, file);
  }
  const std::vector<std::vector<float>> reference = decode(Model(m.dir, WeightResidency::InMemory), 8);
  const ExpertCachePlan plan = Model(m.dir, budget("100%")).expert_cache()->plan();
  const uint64_t down_bytes = uint64_t(c.hidden_size) * uint64_t(c.moe.expert_intermediate_size) * 2;
  const uint64_t small = 3 * down_bytes, large = 4 * down_bytes;  // gate + up + down in BF16; the down in F32
  EXPECT_EQ(plan.expert_bytes, large);
  EXPECT_EQ(plan.routed_bytes, uint64_t(plan.experts - c.moe.num_experts) * small + uint64_t(c.moe.num_experts) * large);
  for (bool prefetch : {false, true}) {
    const Model model(m.dir, budget(std::to_string(uint64_t(plan.min_slots) * plan.expert_bytes), EvictionPolicy::Lru, prefetch));
    EXPECT_EQ(model.expert_cache()->slots(), plan.min_slots);
    EXPECT_EQ(decode(model, 8), reference) << "prefetch " << prefetch;
    const ExpertCacheStats s = model.expert_cache()->stats();
    EXPECT_GT(s.bytes_read, (s.misses + s.prefetch_reads) * int64_t(small)) << "some of the large experts were read";
    EXPECT_LT(s.bytes_read, (s.misses + s.prefetch_reads) * int64_t(large)) << "and some of the small ones";
  }
}

TEST(ExpertCache, SharedPoolIsReadOnceForItsGroup) {
  // Megrez2: three layers route into one pool of 16 experts. With room for all of them, no expert
  // is read twice although every layer of the group picks from the pool.
  const ModelDir m("megrez2", "shared_once");
  const Model model(m.dir, budget("100%", EvictionPolicy::Lru, false));
  const ExpertCachePlan plan = model.expert_cache()->plan();
  EXPECT_EQ(plan.experts, 2 * 16);  // MoE layers 1-3 and 4-5 form two groups, one pool each
  decode(model, 6);
  const ExpertCacheStats s = model.expert_cache()->stats();
  EXPECT_LE(s.misses, plan.experts);
  EXPECT_GT(s.hits, s.misses);
}

TEST(ExpertCache, PreGatedPrefetchNamesExactlyTheExpertsUsed) {
  // Megrez2's routers read the previous layer's FFN input, so the experts named while that layer
  // computes are the ones the next layer uses: accuracy is 100%. A layer-local model's next
  // router on this layer's input is a guess.
  const ModelDir pre("megrez2", "pregated");
  const Model model(pre.dir, budget("50%"));
  decode(model, 6);
  const ExpertCacheStats s = model.expert_cache()->stats();
  EXPECT_GT(s.predicted, 0);
  EXPECT_EQ(s.predicted_right, s.predicted);
  EXPECT_GT(s.prefetch_reads, 0);

  const ModelDir local("moe", "speculative");
  const Model guess(local.dir, budget("50%"));
  decode(guess, 6);
  const ExpertCacheStats g = guess.expert_cache()->stats();
  EXPECT_GT(g.predicted, 0);
  EXPECT_LT(g.predicted_right, g.predicted);
}

TEST(ExpertCache, TheFirstMoeLayerIsNamedDuringTheDenseLayerBeforeIt) {
  // Megrez2's layer 0 is dense and layer 1's router reads layer 0's FFN input, so layer 1's
  // experts are known (and read) while layer 0's FFN computes: every MoE step of the run, the
  // first layer's included, was predicted, and rightly. With everything in room (100%) no step
  // runs in turns, so the steps' experts are exactly the hits and misses.
  const ModelDir m("megrez2", "first_moe_named");
  const Model model(m.dir, budget("100%"));
  ASSERT_FALSE(model.config().layers[0].is_moe);
  ASSERT_TRUE(model.config().layers[1].is_moe);
  decode(model, 6);
  const ExpertCacheStats s = model.expert_cache()->stats();
  EXPECT_EQ(s.predicted, s.hits + s.misses);
  EXPECT_EQ(s.predicted_right, s.predicted);
  EXPECT_GT(s.prefetch_reads, 0);
  EXPECT_GE(s.io_busy_seconds, 0.0);
  EXPECT_LE(s.stall_ahead_seconds, s.stall_seconds);
}

TEST(ExpertCache, RefusesABudgetBelowOneTokensExperts) {
  const ModelDir m("moe", "too_small");
  const Model probe(m.dir, budget("100%"));
  const ExpertCachePlan plan = probe.expert_cache()->plan();
  const uint64_t just_short = uint64_t(plan.min_slots) * plan.expert_bytes - 1;
  try {
    Model model(m.dir, budget(std::to_string(just_short)));
    FAIL() << "a budget below top-k experts was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("one token needs 2 (top-k)"), std::string::npos) << e.what();
  }
  const ModelDir dense("dense", "dense");
  EXPECT_THROW(Model(dense.dir, budget("50%")), Error);
}

TEST(ExpertCache, AFileTruncatedWhileRunningIsAnErrorNamingIt) {
  const ModelDir m("moe", "truncated");
  const uint64_t expert_bytes = Model(m.dir, budget("100%")).expert_cache()->plan().expert_bytes;
  const fs::path file = m.dir / "model.safetensors";
  const fs::path saved = m.dir / "saved.bin";
  fs::copy_file(file, saved);
  // One read at a time, and many page-sized reads in flight (the failing one need not be the
  // first issued), with and without reads ahead.
  for (int depth : {1, 8})
    for (bool prefetch : {false, true}) {
      SCOPED_TRACE("depth " + std::to_string(depth) + " prefetch " + std::to_string(prefetch));
      fs::copy_file(saved, file, fs::copy_options::overwrite_existing);
      ExpertCacheOptions o = in_pages(std::to_string(2 * expert_bytes), depth, prefetch);  // two experts: most steps read
      const Model model(m.dir, o);
      InferenceSession session(model, 64);
      session.forward({1, 2, 3});
      fs::resize_file(file, fs::file_size(file) / 2 + 1000);  // mid-expert and mid-page
      try {
        for (int i = 0; i < 40; ++i) session.forward({(i * 7) % 300});
        FAIL() << "reading experts past the end of a truncated file gave no error";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
      }
    }
}

TEST(ExpertCache, ReadsManyRequestsAtOnceWithTheSameLogits) {
  // Experts of 3 x 64 KiB, read a page at a time: each miss is dozens of requests, and the I/O
  // threads have several in flight at once (never more than the depth). The logits are those of
  // the model in memory at any depth.
  for (const std::string layout : {"megrez2", "moe"}) {
    SCOPED_TRACE(layout);
    const ModelDir m(layout, "depth_" + layout, 256);
    const std::vector<std::vector<float>> reference = decode(Model(m.dir, WeightResidency::InMemory), 6);
    for (int depth : {1, 8})
      for (bool prefetch : {false, true}) {
        const Model model(m.dir, in_pages("50%", depth, prefetch));
        EXPECT_EQ(decode(model, 6), reference) << "depth " << depth << " prefetch " << prefetch;
        const ExpertCache& cache = *model.expert_cache();
        EXPECT_EQ(cache.io_depth(), depth);
        if (depth == 1) EXPECT_EQ(cache.peak_reads_in_flight(), 1);
        else EXPECT_GE(cache.peak_reads_in_flight(), 2) << "prefetch " << prefetch;
        EXPECT_LE(cache.peak_reads_in_flight(), depth);
      }
  }
}

TEST(ExpertCache, AFailedReadLeavesNothingBehind) {
  // A read that fails part-way through an expert (some of its requests succeed) must neither
  // leave that expert in the cache half-read nor keep anything pinned: with the file restored,
  // the same cache decodes the reference logits.
  const ModelDir m("megrez2", "restored", 256);
  const std::vector<std::vector<float>> reference = decode(Model(m.dir, WeightResidency::InMemory), 6);
  const fs::path file = m.dir / "model.safetensors";
  const fs::path saved = m.dir / "saved.bin";
  fs::copy_file(file, saved);
  const Model model(m.dir, in_pages("25%", 8, true));
  fs::resize_file(file, fs::file_size(file) * 3 / 4 + 1000);
  EXPECT_THROW(decode(model, 6), Error);
  fs::copy_file(saved, file, fs::copy_options::overwrite_existing);  // same inode: the cache's descriptor reads it
  EXPECT_EQ(decode(model, 6), reference);
}

TEST(ExpertCache, ProbesTheDisk) {
  const ModelDir m("moe", "probe", 256);
  const Model model(m.dir, in_pages("50%", 4, false));
  const ExpertCache& cache = *model.expert_cache();
  const uint64_t bytes = cache.plan().routed_bytes / 3;
  for (int depth : {1, 4}) {
    const ReadProbe p = cache.probe_reads(depth, bytes, bytes);
    EXPECT_EQ(p.depth, depth);
    EXPECT_GE(p.bytes, bytes);
    EXPECT_LT(p.bytes, bytes + 4096);
    EXPECT_GT(p.bytes_per_second(), 0);
  }
  fs::resize_file(m.dir / "model.safetensors", 4096);
  try {
    cache.probe_reads(4, bytes, 0);
    FAIL() << "a probe of a truncated file gave no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace crossmoe

namespace crossmoe {
namespace {

RoutingTrace trace_of(const std::vector<std::vector<int>>& steps) {
  RoutingTrace t;
  t.steps = steps;
  for (const auto& s : steps) {
    t.accesses += int64_t(s.size());
    t.widest_step = std::max(t.widest_step, s.size());
    for (int k : s) t.experts = std::max(t.experts, k + 1);
  }
  return t;
}

// The fewest misses any eviction choice gives, by trying them all (tiny traces only).
int64_t brute_force_misses(const std::vector<int>& sequence, size_t at, std::vector<int> held, int slots) {
  if (at == sequence.size()) return 0;
  const int key = sequence[at];
  if (std::find(held.begin(), held.end(), key) != held.end()) return brute_force_misses(sequence, at + 1, held, slots);
  if (int(held.size()) < slots) {
    held.push_back(key);
    return 1 + brute_force_misses(sequence, at + 1, held, slots);
  }
  int64_t best = INT64_MAX;
  for (size_t i = 0; i < held.size(); ++i) {
    std::vector<int> next = held;
    next[i] = key;
    best = std::min(best, 1 + brute_force_misses(sequence, at + 1, next, slots));
  }
  return best;
}

TEST(CacheSim, TextbookReferenceString) {
  // 1 2 3 4 1 2 5 1 2 3 4 5 with three frames: LRU faults 10 times, the optimum 7.
  std::vector<std::vector<int>> steps;
  for (int k : {1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5}) steps.push_back({k});
  const RoutingTrace t = trace_of(steps);
  EXPECT_EQ(simulate_cache(t, 3, EvictionPolicy::Lru).misses, 10);
  EXPECT_EQ(simulate_cache(t, 3, std::nullopt).misses, 7);
  EXPECT_EQ(simulate_cache(t, 3, std::nullopt).hits, 5);
}

TEST(CacheSim, BeladyIsTheOptimumAndBoundsThePolicies) {
  uint32_t state = 7;
  const auto next = [&] { return (state = state * 1664525u + 1013904223u) >> 16; };
  for (int round = 0; round < 30; ++round) {
    std::vector<int> sequence;
    std::vector<std::vector<int>> steps;
    for (int i = 0; i < 12; ++i) sequence.push_back(int(next() % 5)), steps.push_back({sequence.back()});
    const RoutingTrace t = trace_of(steps);
    for (int slots : {2, 3}) {
      const int64_t opt = simulate_cache(t, slots, std::nullopt).misses;
      EXPECT_EQ(opt, brute_force_misses(sequence, 0, {}, slots)) << "round " << round << " slots " << slots;
      EXPECT_LE(opt, simulate_cache(t, slots, EvictionPolicy::Lru).misses);
      EXPECT_LE(opt, simulate_cache(t, slots, EvictionPolicy::Frequency).misses);
    }
  }
}

TEST(CacheSim, NextUseKnowsWhenAPoolIsWantedAgain) {
  // Megrez2's pattern: layers 1-3 route into pool A (keys 0-15), layers 4-6 into pool B (16-31),
  // token after token, each step two experts drawn with a skew (some experts are popular). LRU
  // keeps pool A's experts through layers 4-6 although none is wanted before the next token;
  // next-use knows that, and with the next layer's experts known it does better still. Belady's
  // rule bounds both.
  uint32_t state = 11;
  const auto next = [&] { return (state = state * 1664525u + 1013904223u) >> 8; };
  RoutingTrace t;
  for (int token = 0; token < 300; ++token)
    for (int layer = 1; layer <= 6; ++layer) {
      const int pool = layer <= 3 ? 0 : 16;
      std::vector<int> step;
      while (step.size() < 2) {
        const int e = pool + int((next() % 16) * (next() % 16) / 16);  // skewed towards low indices
        if (std::find(step.begin(), step.end(), e) == step.end()) step.push_back(e);
      }
      std::sort(step.begin(), step.end());
      t.steps.push_back(step);
      t.layer.push_back(layer);
      t.position.push_back(token);
      t.accesses += 2;
    }
  t.experts = 32;
  t.widest_step = 2;
  for (int slots : {6, 10, 16}) {
    SCOPED_TRACE("slots " + std::to_string(slots));
    const int64_t lru = simulate_cache(t, slots, EvictionPolicy::Lru).misses;
    const int64_t next_use = simulate_cache(t, slots, EvictionPolicy::NextUse).misses;
    const int64_t knowing = simulate_cache(t, slots, EvictionPolicy::NextUse, {true, 0}).misses;
    const int64_t opt = simulate_cache(t, slots, std::nullopt).misses;
    EXPECT_LT(next_use, lru);
    EXPECT_LE(knowing, next_use);
    EXPECT_LE(opt, knowing);
  }
  // Counting from a position on leaves out the misses of the steps before it.
  EXPECT_LT(simulate_cache(t, 10, EvictionPolicy::Lru, {false, 150}).misses, simulate_cache(t, 10, EvictionPolicy::Lru).misses);
}

TEST(CacheSim, ReplaysWhatTheCacheDid) {
  // Decoding one token at a time, the expert cache (no prefetch) and the simulator replaying the
  // routing trace of that run count the same hits and misses, under LRU and under next-use (the
  // same tracker).
  for (const std::string layout : {"moe", "megrez2"})
    for (EvictionPolicy policy : {EvictionPolicy::Lru, EvictionPolicy::NextUse}) {
      SCOPED_TRACE(layout + " " + to_string(policy));
      const ModelDir m(layout, "replay_" + layout);
      const Model model(m.dir, budget("25%", policy, false));
      InferenceSession session(model, 64);
      std::vector<RoutingRecord> records;
      session.set_trace(&records);
      int token = 1;
      for (int i = 0; i < 30; ++i) {
        const std::vector<float>& logits = session.forward({token});
        token = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
      }
      const fs::path path = m.dir / "trace.jsonl";
      {
        std::ofstream out(path);
        for (const RoutingRecord& r : records) {
          nlohmann::json experts = nlohmann::json::array();
          for (const ExpertRef& e : r.experts) experts.push_back({{"layer", e.owner_layer}, {"expert", e.index}});
          out << nlohmann::json{{"position", r.position}, {"layer", r.layer}, {"experts", experts}}.dump() << "\n";
        }
      }
      const RoutingTrace trace = read_routing_trace(path);
      const int slots = int(model.expert_cache()->slots());
      const SimulatedCache simulated = simulate_cache(trace, slots, policy);
      const ExpertCacheStats real = model.expert_cache()->stats();
      EXPECT_EQ(simulated.hits + simulated.misses, real.hits + real.misses);
      if (policy == EvictionPolicy::NextUse && layout == "moe") {
        // next-use in the simulator learns which layers route to each expert, and how many
        // candidates a layer has, from the trace; the cache knows them from the config. They
        // differ by the experts this short run never chose (here 2 of ~100 misses).
        EXPECT_NEAR(double(simulated.misses), double(real.misses), 0.05 * double(real.misses));
      } else {
        EXPECT_EQ(simulated.misses, real.misses);
      }
      EXPECT_GT(real.hits, 0);
      EXPECT_LE(simulate_cache(trace, slots, std::nullopt).misses, real.misses);
    }
}

}  // namespace
}  // namespace crossmoe

// Stress of the expert cache's reads (tests/test_expert_cache.cpp's fixtures): many budgets,
// I/O depths, prefetch on and off, several sequences in one step and several threads on one
// cache, and files that shrink or vanish while the model runs. The same sweep runs under
// ThreadSanitizer (docs/robustness.md); CROSSMOE_CACHE_STRESS=full widens it to every budget
// from one token's experts to 100% and every depth from 1 to 16.
namespace crossmoe {
namespace {

bool full_stress() {
  const char* v = std::getenv("CROSSMOE_CACHE_STRESS");
  return v && std::string(v) == "full";
}

// Three sequences with their own prompts, prefilled in one step and then decoded together,
// greedily: every step's logits of every sequence.
std::vector<std::vector<float>> decode_together(const Model& model, int new_tokens) {
  const int V = model.config().vocab_size;
  BatchSession batch(model, 8, 24, 64);
  std::vector<int> seqs;
  std::vector<std::vector<int>> prompts;
  for (int s = 0; s < 3; ++s) {
    seqs.push_back(batch.open());
    prompts.emplace_back();
    for (int i = 0; i < 9 + 3 * s; ++i) prompts.back().push_back((i * 31 + 7 * s + 3) % V);
  }
  std::vector<std::vector<float>> out;
  std::vector<std::vector<float>> logits(3, std::vector<float>(V));
  std::vector<int> last(3);
  for (int step = 0; step <= new_tokens; ++step) {
    std::vector<StepPiece> pieces;
    for (int s = 0; s < 3; ++s)
      pieces.push_back(step == 0 ? StepPiece{seqs[s], prompts[s].data(), int(prompts[s].size()), logits[s].data()}
                                 : StepPiece{seqs[s], &last[s], 1, logits[s].data()});
    batch.step(pieces);
    for (int s = 0; s < 3; ++s) {
      out.push_back(logits[s]);
      last[s] = int(std::max_element(logits[s].begin(), logits[s].end()) - logits[s].begin());
    }
  }
  return out;
}

TEST(ExpertCacheStress, EveryBudgetDepthAndPrefetchGivesTheSameLogits) {
  const bool full = full_stress();
  for (const std::string layout : {"megrez2", "moe"}) {
    SCOPED_TRACE(layout);
    const ModelDir m(layout, "stress_" + layout, 128);
    const Model in_memory(m.dir, WeightResidency::InMemory);
    const std::vector<std::vector<float>> one = decode(in_memory, 4), together = decode_together(in_memory, 4);
    const ExpertCachePlan plan = Model(m.dir, budget("100%")).expert_cache()->plan();
    // Quick: one token's experts and half of them, depths 1 and 16, the default policy. Full:
    // every size, every depth from 1 to 16, lru as well.
    std::vector<int64_t> slot_counts = {plan.min_slots, plan.experts / 2};
    std::vector<int> depths = {1, 16};
    std::vector<EvictionPolicy> policies = {EvictionPolicy::NextUse};
    if (full) {
      slot_counts.clear();
      for (int64_t s = plan.min_slots; s <= plan.experts; ++s) slot_counts.push_back(s);
      depths.clear();
      for (int d = 1; d <= 16; ++d) depths.push_back(d);
      policies.push_back(EvictionPolicy::Lru);
    }
    for (int64_t slots : slot_counts)
      for (int depth : depths)
        for (bool prefetch : {false, true})
          for (EvictionPolicy policy : policies) {
            SCOPED_TRACE("slots " + std::to_string(slots) + " depth " + std::to_string(depth) + " prefetch " +
                         std::to_string(prefetch) + " " + to_string(policy));
            ExpertCacheOptions o = in_pages(std::to_string(uint64_t(slots) * plan.expert_bytes), depth, prefetch);
            o.policy = policy;
            const Model model(m.dir, o);
            ASSERT_EQ(model.expert_cache()->slots(), slots);
            EXPECT_EQ(decode(model, 4), one);
            EXPECT_EQ(decode_together(model, 4), together);
            const ExpertCacheStats s = model.expert_cache()->stats();
            EXPECT_EQ(s.bytes_read, (s.misses + s.prefetch_reads) * int64_t(plan.expert_bytes));
            EXPECT_LE(model.expert_cache()->peak_reads_in_flight(), depth);
          }
  }
}

TEST(ExpertCacheStress, SessionsOnSeveralThreadsShareOneCache) {
  // Each thread decodes with its own session; the cache serves them one step at a time (a
  // step's pins belong to its thread), with the logits of the model in memory.
  const ModelDir m("megrez2", "threads", 128);
  const std::vector<std::vector<float>> reference = decode(Model(m.dir, WeightResidency::InMemory), 6);
  const ExpertCachePlan plan = Model(m.dir, budget("100%")).expert_cache()->plan();
  for (int64_t slots : {int64_t(plan.min_slots), plan.experts / 2})
    for (bool prefetch : {false, true}) {
      SCOPED_TRACE("slots " + std::to_string(slots) + " prefetch " + std::to_string(prefetch));
      const Model model(m.dir, in_pages(std::to_string(uint64_t(slots) * plan.expert_bytes), 8, prefetch));
      std::vector<std::vector<std::vector<float>>> got(3);
      std::vector<std::thread> threads;
      for (int t = 0; t < 3; ++t) threads.emplace_back([&, t] { got[t] = decode(model, 6); });
      for (std::thread& t : threads) t.join();
      for (int t = 0; t < 3; ++t) EXPECT_EQ(got[t], reference) << "thread " << t;
    }
}

TEST(ExpertCacheStress, AFileShrinkingAtAnyMomentIsAnErrorOrTheRightLogits) {
  // A second thread truncates the weights file while decoding runs, after a delay that moves
  // the cut across the run. Every step that returns has the reference logits; the first that
  // cannot read its experts throws an Error naming the file. A file that vanishes (unlinked)
  // keeps its data for the descriptor the cache holds: the run goes on with the right logits.
  const ModelDir m("megrez2", "shrinking", 128);
  const Model in_memory(m.dir, WeightResidency::InMemory);
  const std::vector<std::vector<float>> reference = decode(in_memory, 6);
  const fs::path file = m.dir / "model.safetensors", saved = m.dir / "saved.bin";
  fs::copy_file(file, saved);
  const uint64_t size = fs::file_size(file);
  int errors = 0;
  const int rounds = full_stress() ? 60 : 12;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    fs::copy_file(saved, file, fs::copy_options::overwrite_existing);
    const Model model(m.dir, in_pages("25%", 1 + round % 16, round % 2 == 0));
    std::vector<std::vector<float>> got;
    std::thread cutter([&] {
      std::this_thread::sleep_for(std::chrono::microseconds(400 * (round % 7)));
      fs::resize_file(file, size / 2 + 1000 + 4096 * (round % 5));
    });
    try {
      std::vector<int> prompt;
      for (int i = 0; i < 24; ++i) prompt.push_back((i * 37 + 11) % model.config().vocab_size);
      InferenceSession session(model, 64, 32);
      const std::vector<float>* logits = &session.forward(prompt);
      for (int i = 0; i < 6; ++i) {
        got.push_back(*logits);
        const int next = int(std::max_element(logits->begin(), logits->end()) - logits->begin());
        logits = &session.forward({next});
      }
    } catch (const Error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
    }
    cutter.join();
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], reference[i]) << "token " << i;
  }
  EXPECT_GT(errors, 0);

  fs::copy_file(saved, file, fs::copy_options::overwrite_existing);
  const Model model(m.dir, in_pages("25%", 4, true));
  fs::remove(file);
  EXPECT_EQ(decode(model, 6), reference);
}

}  // namespace
}  // namespace crossmoe
