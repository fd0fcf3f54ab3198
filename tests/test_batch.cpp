// The batched session against the one-sequence session: many sequences decoded together, joining
// and leaving mid-stream, prefill chunks sharing steps with decode, prefix blocks reused, must
// give each sequence the greedy tokens it gets alone and logits within float rounding (the
// matmuls see more rows, which may change the order of sums inside a kernel, nothing else).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <omp.h>

#include "kernels/thread_pool.hpp"
#include "model/init.hpp"
#include "runtime/forward.hpp"
#include "small_models.hpp"
#include "temp_dir.hpp"
#include "util/error.hpp"

namespace crossmoe {
namespace {

constexpr double kLogitTolerance = 2e-5;

// A random model of a crossmoe layout, or a transformers fixture ("hf/deepseek_v3": latent
// attention, whose keys and values have widths of their own in the cache).
struct SmallModel {
  std::filesystem::path dir;
  bool owned = false;
  std::unique_ptr<Model> model;
  explicit SmallModel(const std::string& layout) {
    if (layout.rfind("hf/", 0) == 0) {
      dir = std::filesystem::path(CROSSMOE_FIXTURES) / layout;
    } else {
      dir = testing_paths::temp_path("batch_" + layout);
      owned = true;
      ModelConfig c = testing_models::small(layout);
      c.finalize();
      InitOptions options;
      options.seed = 11;
      options.norm_noise = 0.2f;
      write_random_model(c, dir, options);
    }
    model = std::make_unique<Model>(dir);
  }
  ~SmallModel() {
    if (owned) std::filesystem::remove_all(dir);
  }
};

int argmax(const float* logits, int n) { return int(std::max_element(logits, logits + n) - logits); }

// Greedy decoding of one prompt alone: the tokens and the logits each was chosen from.
struct Decoded {
  std::vector<int> tokens;
  std::vector<std::vector<float>> logits;
};
Decoded decode_alone(const Model& model, const std::vector<int>& prompt, int new_tokens) {
  InferenceSession session(model, 128, 5);
  const int V = model.config().vocab_size;
  Decoded out;
  const std::vector<float>* logits = &session.forward(prompt);
  for (int i = 0; i < new_tokens; ++i) {
    out.logits.emplace_back(logits->begin(), logits->begin() + V);
    out.tokens.push_back(argmax(logits->data(), V));
    if (i + 1 < new_tokens) logits = &session.forward({out.tokens.back()});
  }
  return out;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::fabs(a[i] - b[i])));
  return m;
}

// Prompts of different lengths; the later ones begin with the first one's tokens, so their
// first blocks are found in the cache.
std::vector<std::vector<int>> prompts() {
  std::vector<std::vector<int>> p = {{5, 77, 123, 9, 250, 31, 64, 199, 2, 18, 42},
                                     {7, 8},
                                     {100, 101, 102, 103, 104, 105, 106},
                                     {},
                                     {290, 3, 3, 3, 17, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73}};
  p[3] = p[0];
  p[3].insert(p[3].end(), {11, 12, 13});
  p.push_back(std::vector<int>(p[0].begin(), p[0].begin() + 9));  // ends inside a cached block
  return p;
}

class BatchedDecoding : public ::testing::TestWithParam<std::string> {};

// A small continuous-batching loop: each step decodes one token of every running sequence and
// fills the rest of the step's token budget with prefill chunks of waiting ones. Sequence i
// joins at step 2 i and leaves after its own number of tokens.
TEST_P(BatchedDecoding, SameTokensAsEachSequenceAlone) {
  const SmallModel m(GetParam());
  const Model& model = *m.model;
  const int V = model.config().vocab_size;
  const auto ps = prompts();
  std::vector<int> wanted;
  std::vector<Decoded> alone;
  for (size_t i = 0; i < ps.size(); ++i) {
    wanted.push_back(4 + int(i * 3) % 7);
    alone.push_back(decode_alone(model, ps[i], wanted.back()));
  }

  BatchSession batch(model, /*block_size=*/4, /*blocks=*/64, /*chunk=*/8);
  struct Running {
    int sequence = -1;
    size_t prefilled = 0;  // prompt tokens in the cache
    std::vector<int> out;
    std::vector<float> logits;
    bool done = false;
  };
  std::vector<Running> run(ps.size());
  int reused_total = 0;
  for (int step = 0; std::any_of(run.begin(), run.end(), [](const Running& r) { return !r.done; }); ++step) {
    ASSERT_LT(step, 200);
    for (size_t i = 0; i < ps.size(); ++i)
      if (int(i) * 2 == step) {
        run[i].sequence = batch.open();
        run[i].prefilled = batch.reuse_prefix(run[i].sequence, ps[i]);
        reused_total += int(run[i].prefilled);
        run[i].logits.resize(V);
      }
    std::vector<StepPiece> pieces;
    std::vector<size_t> owner;
    int budget = batch.chunk();
    for (size_t i = 0; i < ps.size(); ++i)  // decode first: running sequences never wait
      if (run[i].sequence >= 0 && !run[i].done && run[i].prefilled == ps[i].size()) {
        pieces.push_back({run[i].sequence, &run[i].out.back(), 1, run[i].logits.data()});
        owner.push_back(i);
        --budget;
      }
    for (size_t i = 0; i < ps.size() && budget > 0; ++i)
      if (run[i].sequence >= 0 && run[i].prefilled < ps[i].size()) {
        const int n = std::min(budget, int(ps[i].size() - run[i].prefilled));
        const bool last = run[i].prefilled + n == ps[i].size();
        pieces.push_back({run[i].sequence, &ps[i][run[i].prefilled], n, last ? run[i].logits.data() : nullptr});
        owner.push_back(i);
        budget -= n;
      }
    if (pieces.empty()) continue;
    batch.step(pieces);
    for (size_t p = 0; p < pieces.size(); ++p) {
      Running& r = run[owner[p]];
      const size_t i = owner[p];
      if (r.prefilled < ps[i].size()) {
        r.prefilled += pieces[p].count;
        if (r.prefilled < ps[i].size()) continue;
      }
      const size_t k = r.out.size();
      EXPECT_LT(max_diff(r.logits, alone[i].logits[k]), kLogitTolerance) << "sequence " << i << " token " << k;
      r.out.push_back(argmax(r.logits.data(), V));
      if (int(r.out.size()) == wanted[i]) {
        r.done = true;
        batch.close(r.sequence);
      }
    }
  }
  for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(run[i].out, alone[i].tokens) << "sequence " << i;
  // Sequences 3 and 5 start with sequence 0's prompt: two whole blocks each.
  EXPECT_EQ(reused_total, 16);
  EXPECT_EQ(batch.pool().in_use(), 0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, BatchedDecoding,
                         ::testing::Values("dense", "moe", "megrez2", "rexmoe", "hf/deepseek_v3"));

// A position costs its keys and values per layer and cache head; latent attention's value c is
// the key's first kv_lora_rank floats and is not stored again.
TEST(KvPool, BytesPerPositionCountAValueKeptInItsKeyOnce) {
  const SmallModel latent("hf/deepseek_v3"), grouped("moe");
  const ModelConfig& l = latent.model->config();
  const LatentAttention& a = *l.latent_attention;
  EXPECT_EQ(KvPool::bytes_per_position(l), int64_t(l.num_layers) * (a.kv_lora_rank + a.qk_rope_head_dim) * 4);
  const ModelConfig& g = grouped.model->config();
  EXPECT_EQ(KvPool::bytes_per_position(g), int64_t(g.num_layers) * g.num_kv_heads * 2 * g.head_dim * 4);
  // Blocks of 20 positions take two whole key tiles (32 positions) each.
  EXPECT_EQ(KvPool::bytes_per_block(l, 20), 32 * KvPool::bytes_per_position(l));
  EXPECT_EQ(KvPool::blocks_for_bytes(l, 20, 5 * KvPool::bytes_per_block(l, 20) + 1), 5);
  const KvPool pool(l, 20, 3);
  EXPECT_EQ(pool.key_block_floats(), size_t(32) * (a.kv_lora_rank + a.qk_rope_head_dim));
  EXPECT_EQ(pool.value_block_floats(), 0u);
}

TEST(BatchSession, ReusedPrefixGivesTheLogitsOfAFullPrefill) {
  const SmallModel m("megrez2");
  const int V = m.model->config().vocab_size;
  const std::vector<int> prompt = {5, 77, 123, 9, 250, 31, 64, 199, 2, 18, 42, 1, 2};
  BatchSession batch(*m.model, 4, 16, 64);
  std::vector<float> first(V), second(V);
  const int a = batch.open();
  EXPECT_EQ(batch.reuse_prefix(a, prompt), 0);  // nothing cached yet
  batch.step({{a, prompt.data(), int(prompt.size()), first.data()}});
  EXPECT_EQ(batch.pool().in_use(), 4);
  const int b = batch.open();
  const int reused = batch.reuse_prefix(b, prompt);
  EXPECT_EQ(reused, 12);  // three whole blocks; the last token runs again
  EXPECT_EQ(batch.pool().in_use(), 4);  // shared, not copied
  batch.step({{b, prompt.data() + reused, int(prompt.size()) - reused, second.data()}});
  EXPECT_EQ(batch.pool().in_use(), 5);
  EXPECT_LT(max_diff(first, second), kLogitTolerance);
  EXPECT_EQ(batch.tokens(b), prompt);
  // A prompt that differs inside the second block shares only the first.
  std::vector<int> other = prompt;
  other[6] = 3;
  const int c = batch.open();
  EXPECT_EQ(batch.reuse_prefix(c, other), 4);
}

// The logits a session gave (its first V) and those after each of 3 greedy tokens after them.
std::vector<std::vector<float>> logits_then_greedy(InferenceSession& session, const std::vector<float>& first, int V) {
  std::vector<std::vector<float>> steps;
  const std::vector<float>* logits = &first;
  for (int i = 0; i < 3; ++i) {
    steps.emplace_back(logits->begin(), logits->begin() + V);
    logits = &session.forward({argmax(logits->data(), V)});
  }
  return steps;
}

void expect_same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)), 0) << "step " << i;
}

// Latent attention keeps one kv head for every query head, so a decode step's attention is one
// item of work unless its heads are split between threads. Every row's products are its own, so
// the logits must be the same bits on one thread and on two (where a context this long splits the
// four heads into two items of two: its attention is worth two threads, kernels::kMinParallelWork).
TEST(BatchSession, LatentDecodeSplitsItsHeadsOverThreadsWithTheSameBits) {
  const SmallModel m("hf/deepseek_v3");
  const ModelConfig& c = m.model->config();
  const int V = c.vocab_size;
  const int length = int(kernels::kMinParallelWork / (int64_t(c.num_heads) * c.cache_key_dim())) + 64;
  std::vector<int> prompt;
  for (int i = 0; i < length; ++i) prompt.push_back((i * 37 + 11) % V);
  const int threads_before = omp_get_max_threads();
  std::vector<std::vector<float>> steps[2];
  for (int run = 0; run < 2; ++run) {
    omp_set_num_threads(run + 1);
    InferenceSession session(*m.model, length + 8);
    steps[run] = logits_then_greedy(session, session.forward(prompt), V);
  }
  omp_set_num_threads(threads_before);
  expect_same_bits(steps[0], steps[1]);
}

TEST(BatchSession, RewindIntoASharedBlockCopiesIt) {
  // b rewinds into a block it shares with a and writes new tokens there: a must not see them.
  for (const char* layout : {"moe", "hf/deepseek_v3"}) {
    SCOPED_TRACE(layout);
    const SmallModel m(layout);
    const int V = m.model->config().vocab_size;
    const std::vector<int> prompt = {5, 77, 123, 9, 250, 31, 64, 199, 2};
    BatchSession batch(*m.model, 4, 16, 64);
    std::vector<float> logits(V);
    const int a = batch.open();
    batch.step({{a, prompt.data(), int(prompt.size()), logits.data()}});
    const int b = batch.open();
    ASSERT_EQ(batch.reuse_prefix(b, prompt), 8);
    batch.rewind(b, 6);
    const std::vector<int> changed = {40, 41, 42};
    batch.step({{b, changed.data(), 3, logits.data()}});
    std::vector<int> b_prompt(prompt.begin(), prompt.begin() + 6);
    b_prompt.insert(b_prompt.end(), changed.begin(), changed.end());
    EXPECT_LT(max_diff(logits, decode_alone(*m.model, b_prompt, 1).logits[0]), kLogitTolerance);
    const int next = 17;
    batch.step({{a, &next, 1, logits.data()}});
    std::vector<int> a_prompt = prompt;
    a_prompt.push_back(next);
    EXPECT_LT(max_diff(logits, decode_alone(*m.model, a_prompt, 1).logits[0]), kLogitTolerance);
  }
}

TEST(BatchSession, FullPoolRefusesCleanlyAndRecovers) {
  const SmallModel m("dense");
  const int V = m.model->config().vocab_size;
  BatchSession batch(*m.model, 4, 3, 64);
  const std::vector<int> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};  // three blocks
  std::vector<float> logits(V);
  const int a = batch.open();
  ASSERT_TRUE(batch.reserve(a, 9));
  batch.step({{a, prompt.data(), 9, logits.data()}});
  EXPECT_EQ(batch.pool().available(), 0);
  const int b = batch.open();
  EXPECT_EQ(batch.blocks_needed(b, 1), 1);
  EXPECT_FALSE(batch.reserve(b, 1));
  EXPECT_EQ(batch.pool().available(), 0);  // nothing taken
  EXPECT_THROW(batch.step({{b, prompt.data(), 1, logits.data()}}), Error);
  EXPECT_EQ(batch.length(b), 0);
  // a still has room in its last block; running it on stays exact.
  const int next = 10;
  batch.step({{a, &next, 1, logits.data()}});
  std::vector<int> a_prompt = prompt;
  a_prompt.push_back(next);
  EXPECT_LT(max_diff(logits, decode_alone(*m.model, a_prompt, 1).logits[0]), kLogitTolerance);
  // Closing a frees its blocks at once (the full ones stay cached but can be taken).
  batch.close(a);
  EXPECT_EQ(batch.pool().available(), 3);
  EXPECT_TRUE(batch.reserve(b, 12));
  batch.step({{b, prompt.data(), 9, logits.data()}});
  EXPECT_LT(max_diff(logits, decode_alone(*m.model, prompt, 1).logits[0]), kLogitTolerance);
}

TEST(BatchSession, RejectsBadSteps) {
  const SmallModel m("dense");
  BatchSession batch(*m.model, 4, 8, 4);
  const int a = batch.open();
  const std::vector<int> five = {1, 2, 3, 4, 5};
  EXPECT_THROW(batch.step({{a, five.data(), 5}}), Error);  // over the chunk
  const int bad = m.model->config().vocab_size;
  EXPECT_THROW(batch.step({{a, &bad, 1}}), Error);
  EXPECT_THROW(batch.step({{a, five.data(), 1}, {a, five.data(), 1}}), Error);
  EXPECT_THROW(batch.close(a + 1), Error);
  EXPECT_THROW(BatchSession(*m.model, 4, 0), Error);
}

// A prefill's rows take their biases, q/k norms, rotation and cache writes over the threads once
// there are enough of them (kernels::kMinParallelWork); in pieces of 7 they run one after the other
// on one thread. Each row's work is its own, so both give the same bits: the logits after the
// prompt and after decoded tokens (which read the cached keys and values) are equal.
class PrefillRows : public ::testing::TestWithParam<const char*> {};

TEST_P(PrefillRows, OverThreadsOrInSmallPiecesGiveTheSameBits) {
  const SmallModel m(GetParam());
  const ModelConfig& c = m.model->config();
  const int V = c.vocab_size;
  const int64_t row_floats = int64_t(c.num_heads + c.cache_heads()) * c.cache_key_dim();
  const int length = int(kernels::kMinParallelWork / row_floats) + 40;
  std::vector<int> prompt;
  for (int i = 0; i < length; ++i) prompt.push_back((i * 53 + 7) % V);
  const int threads_before = omp_get_max_threads();
  std::vector<std::vector<float>> steps[2];
  for (int run = 0; run < 2; ++run) {
    omp_set_num_threads(run == 0 ? 2 : 1);
    InferenceSession session(*m.model, length + 8, length);  // the whole prompt in one step
    const std::vector<float>* logits = nullptr;
    if (run == 0) {
      logits = &session.forward(prompt);
    } else {
      for (int at = 0; at < length; at += 7)
        logits = &session.forward(std::vector<int>(prompt.begin() + at, prompt.begin() + std::min(length, at + 7)));
    }
    steps[run] = logits_then_greedy(session, *logits, V);
  }
  omp_set_num_threads(threads_before);
  expect_same_bits(steps[0], steps[1]);
}

INSTANTIATE_TEST_SUITE_P(Layouts, PrefillRows, ::testing::Values("dense", "moe", "megrez2", "hf/deepseek_v3"));

// bf16 matrices in the tile unit's order (kernels::pack_bf16_tiles: where a CPU has AMX-BF16, the
// model of its tiles here): every product of a token runs on the tiles, so a prompt in one step,
// in pieces of 7 and one token at a time gives the same bits, and the logits stay within float
// rounding of the rows' (the f32 activations' three bf16 parts keep all their bits).
class Bf16Tiles : public ::testing::TestWithParam<const char*> {};

TEST_P(Bf16Tiles, PromptsInOneStepInPiecesOrTokenByTokenGiveTheSameBits) {
  if (!kernels::isa_supported(kernels::Isa::Avx512Vnni)) GTEST_SKIP() << "this CPU runs neither AMX-BF16 nor the model of its tiles";
  struct Guard {
    ~Guard() { kernels::set_bf16_tiles(kernels::Bf16TilesUse::ByIsa); }
  } guard;
  const int length = 23;
  std::vector<std::vector<float>> rows;
  kernels::set_bf16_tiles(kernels::Bf16TilesUse::Never);
  {
    const SmallModel m(GetParam());
    std::vector<int> prompt;
    for (int i = 0; i < length; ++i) prompt.push_back((i * 53 + 7) % m.model->config().vocab_size);
    InferenceSession session(*m.model, length + 8, length);
    rows = logits_then_greedy(session, session.forward(prompt), m.model->config().vocab_size);
  }
  kernels::set_bf16_tiles(kernels::Bf16TilesUse::Always);
  const SmallModel m(GetParam());
  const int V = m.model->config().vocab_size;
  std::vector<int> prompt;
  for (int i = 0; i < length; ++i) prompt.push_back((i * 53 + 7) % V);
  int packed = 0, bf16 = 0;  // kv_b stays as rows where latent attention reads it as k_up and v_up
  const LayerWeights& first = m.model->weights().layers[0];
  for (const kernels::Matrix* w : first.attention_matrices()) {
    bf16 += w->dtype == DType::BF16 && w->cols % 32 == 0 && w->rows >= 16 && !(w == &first.kv_b && first.latent_up);
    packed += w->layout == kernels::Layout::Bf16Tiles;
  }
  EXPECT_EQ(packed, bf16);
  std::vector<std::vector<float>> steps[3];
  for (int run = 0; run < 3; ++run) {
    InferenceSession session(*m.model, length + 8, length);
    const std::vector<float>* logits = nullptr;
    const int piece = run == 0 ? length : run == 1 ? 7 : 1;
    for (int at = 0; at < length; at += piece)
      logits = &session.forward(std::vector<int>(prompt.begin() + at, prompt.begin() + std::min(length, at + piece)));
    steps[run] = logits_then_greedy(session, *logits, V);
  }
  expect_same_bits(steps[0], steps[1]);
  expect_same_bits(steps[0], steps[2]);
  EXPECT_LT(max_diff(steps[0][0], rows[0]), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Bf16Tiles, ::testing::Values("dense", "moe", "megrez2", "hf/deepseek_v3"));

}  // namespace
}  // namespace crossmoe
