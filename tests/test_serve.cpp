// crossmoe serve as its users meet it: OpenAI's official Node client (npm `openai`, installed by
// scripts/setup.sh) for completions, chat and streaming, whose greedy text must equal `crossmoe
// generate` and `crossmoe chat`; requests sent at once must get what they get one by one; and
// the error paths over plain HTTP: bad JSON and types, context overflow, API key, body size,
// a full queue, and a client that leaves mid-stream (its KV blocks freed at once).
#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_run.hpp"
#include "kernels/kernels.hpp"
#include "runtime/forward.hpp"
#include "runtime/model_files.hpp"
#include "serve/server.hpp"
#include "temp_dir.hpp"
#include "tokenizer/chat_template.hpp"

namespace crossmoe {
namespace {

using Json = nlohmann::json;
using testing_cli::run;
using testing_cli::run_shell;

constexpr const char* kKey = "sk-test-key";
constexpr int kMaxTokens = 12;

// A running server, stopped with SIGTERM (which must end it cleanly) when the test is done.
struct ServerProcess {
  pid_t pid = -1;
  int port = 0;
  ServerProcess(const std::filesystem::path& dir, const std::string& flags) {
    const auto port_file = dir / ("port_" + std::to_string(::getpid()));
    std::filesystem::remove(port_file);
    pid = testing_cli::spawn("serve " + (dir / "model").string() + " --port 0 --port-file " + port_file.string() +
                                 " " + flags,
                             dir / "serve.log");
    for (int i = 0; i < 600 && !std::filesystem::exists(port_file); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream(port_file) >> port;
  }
  ~ServerProcess() {
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "serve did not stop cleanly on SIGTERM";
  }
  httplib::Client client(bool with_key = true) const {
    httplib::Client c("127.0.0.1", port);
    if (with_key) c.set_bearer_token_auth(kKey);
    c.set_read_timeout(60, 0);
    return c;
  }
};

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testing_paths::temp_path("serve");
    std::filesystem::create_directories(dir_);
    std::ofstream corpus(dir_ / "corpus.txt");
    for (int i = 0; i < 200; ++i)
      corpus << "The cat sat on the mat and looked at the morning sun. It was " << i << " days before she said that "
             << "all of the people in the town had gone to the sea.\n";
    corpus.close();
    ASSERT_EQ(run("tokenizer train " + (dir_ / "corpus.txt").string() + " --vocab-size 300 -o " + (dir_ / "tok").string()).code, 0);
    ASSERT_EQ(run("init " + (dir_ / "model").string() + " --tokenizer " + (dir_ / "tok" / "tokenizer.json").string() +
                  " --layout megrez2 --hidden 64 --layers 3 --context 256")
                  .code,
              0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::filesystem::path dir_;
};
std::filesystem::path Serve::dir_;

Json error_of(const httplib::Result& r) { return Json::parse(r->body).at("error"); }

TEST_F(Serve, OpenAiClientGetsTheTextOfGenerateAndChat) {
  const std::string modules = CROSSMOE_NPM_DIR;
  if (!std::filesystem::exists(modules + "/openai")) GTEST_SKIP() << "npm openai not installed (scripts/setup.sh)";
  const ServerProcess server(dir_, std::string("--api-key ") + kKey);
  ASSERT_GT(server.port, 0);
  const std::string prompt = "The cat sat", message = "Where is the cat?";
  const auto client = run_shell("node " + std::string(CROSSMOE_SOURCE_DIR) + "/tests/serve/openai_client.cjs " + modules +
                                " http://127.0.0.1:" + std::to_string(server.port) + "/v1 " + kKey + " '" + prompt +
                                "' '" + message + "' " + std::to_string(kMaxTokens));
  ASSERT_EQ(client.code, 0) << client.out;
  const Json out = Json::parse(client.out);

  // generate prints the prompt, the continuation and a newline.
  const std::string model = (dir_ / "model").string();
  const auto generated = run("generate " + model + " -p '" + prompt + "' -n " + std::to_string(kMaxTokens) +
                                 " --temperature 0",
                             false);
  ASSERT_EQ(generated.code, 0);
  const std::string expected = generated.out.substr(prompt.size(), generated.out.size() - prompt.size() - 1);
  EXPECT_EQ(out["models"], Json::array({"model"}));
  EXPECT_EQ(out["completion"]["text"], expected);
  EXPECT_EQ(out["completion_stream"]["text"], expected);
  EXPECT_EQ(out["completion"]["usage"]["completion_tokens"].get<int>() + out["completion"]["usage"]["prompt_tokens"].get<int>(),
            out["completion"]["usage"]["total_tokens"].get<int>());

  // chat, piped, answers with one JSON line per message.
  const auto chatted = run_shell("printf '%s\\n' '" + message + "' | " + CROSSMOE_BIN + " chat " + model + " -n " +
                                 std::to_string(kMaxTokens) + " --temperature 0 2>/dev/null");
  ASSERT_EQ(chatted.code, 0);
  const Json reply = Json::parse(chatted.out);
  EXPECT_EQ(out["chat"]["text"], reply["content"]);
  EXPECT_EQ(out["chat_stream"]["text"], reply["content"]);
  EXPECT_EQ(out["chat"]["finish"], reply["finish_reason"]);
  EXPECT_EQ(out["chat_stream"]["finish"], reply["finish_reason"]);
  EXPECT_EQ(out["chat"]["usage"]["prompt_tokens"], reply["prompt_tokens"]);

  EXPECT_EQ(out["together"], out["one_by_one"]);
  EXPECT_EQ(out["together"].back(), expected);
  EXPECT_EQ(out["wrong_key_status"], 401);
}

// The reference for log-probabilities: greedy decoding where every token comes from a fresh full
// forward pass over the prompt and the tokens so far (no decode steps, no batching, no reused
// cache), its logits turned into log-probabilities in double precision here.
struct ReferenceToken {
  int id;
  double logprob;
  std::vector<std::pair<int, double>> top;  // most likely first
};
std::vector<ReferenceToken> reference_greedy(const Model& model, std::vector<int> ids, int count, int top,
                                             const std::vector<int>& stops) {
  const int vocab = model.config().vocab_size;
  std::vector<ReferenceToken> out;
  for (int n = 0; n < count; ++n) {
    InferenceSession session(model, int(ids.size()) + 1, int(ids.size()));
    const std::vector<float> logits = session.forward(ids);
    double max = logits[0], sum = 0;
    for (float v : logits) max = std::max(max, double(v));
    for (float v : logits) sum += std::exp(double(v) - max);
    std::vector<int> order(vocab);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    ReferenceToken t{order[0], double(logits[order[0]]) - max - std::log(sum), {}};
    for (int i = 0; i < top; ++i) t.top.push_back({order[i], double(logits[order[i]]) - max - std::log(sum)});
    out.push_back(t);
    if (std::find(stops.begin(), stops.end(), t.id) != stops.end()) break;
    ids.push_back(t.id);
  }
  return out;
}

TEST_F(Serve, LogprobsAreTheLogSoftmaxOfAFullForward) {
  const std::string modules = CROSSMOE_NPM_DIR;
  if (!std::filesystem::exists(modules + "/openai")) GTEST_SKIP() << "npm openai not installed (scripts/setup.sh)";
  const ServerProcess server(dir_, std::string("--api-key ") + kKey);
  ASSERT_GT(server.port, 0);
  const std::string prompt = "The cat sat", message = "Where is the cat?";
  const int top = 3;
  const auto client = run_shell("node " + std::string(CROSSMOE_SOURCE_DIR) + "/tests/serve/openai_logprobs.cjs " +
                                modules + " http://127.0.0.1:" + std::to_string(server.port) + "/v1 " + kKey + " '" +
                                prompt + "' '" + message + "' " + std::to_string(kMaxTokens) + " " + std::to_string(top));
  ASSERT_EQ(client.code, 0) << client.out;
  const Json out = Json::parse(client.out);

  const Model model(dir_ / "model");
  Tokenizer tokenizer = require_model_tokenizer(dir_ / "model", "the test needs one");
  // The prompts as the server builds them: a completion's text with the tokenizer's special
  // tokens around it, a chat rendered by the model's template.
  const std::vector<int> completion_prompt = tokenizer.encode(prompt, true);
  ChatRequest chat;
  chat.messages.push_back({{"role", "user"}, {"content", message}});
  const Json tokenizer_config = read_model_tokenizer_config(dir_ / "model");
  const std::vector<int> chat_prompt = tokenizer.encode(apply_chat_template(tokenizer_config, chat));
  // The server's stop tokens: the model's EOS ids, for chat also the template's eos_token.
  const std::vector<int> completion_stops = model.config().eos_token_ids;
  std::vector<int> chat_stops = completion_stops;
  chat_stops.push_back(tokenizer.token_to_id(tokenizer_config.at("eos_token").get<std::string>()));
  const auto bytes = [](const std::string& s) {
    Json b = Json::array();
    for (unsigned char c : s) b.push_back(int(c));
    return b;
  };
  constexpr double kTolerance = 1e-4;  // float logits of two computation orders

  for (const char* key : {"completion", "completion_stream"}) {
    SCOPED_TRACE(key);
    const Json& l = out[key]["logprobs"];
    const std::vector<ReferenceToken> ref = reference_greedy(model, completion_prompt, kMaxTokens, top, completion_stops);
    // A stop token ends the text without a log-probability of its own.
    const size_t shown = ref.size() - (ref.size() < size_t(kMaxTokens) ? 1 : 0);
    ASSERT_EQ(l["tokens"].size(), shown);
    std::string text;  // the tokens' own texts, which text_offset counts
    std::vector<int> ids;
    for (size_t i = 0; i < shown; ++i) {
      EXPECT_EQ(l["tokens"][i], tokenizer.decode({ref[i].id})) << i;
      EXPECT_NEAR(l["token_logprobs"][i].get<double>(), ref[i].logprob, kTolerance) << i;
      EXPECT_LE(l["token_logprobs"][i].get<double>(), 0.0);
      EXPECT_EQ(l["text_offset"][i].get<size_t>(), text.size()) << i;
      text += tokenizer.decode({ref[i].id});
      ids.push_back(ref[i].id);
      // A map by text: of tokens that read the same (ids past the tokenizer's vocabulary read
      // as ""), the most likely.
      Json expected_top = Json::object();
      for (const auto& [id, logprob] : ref[i].top)
        if (!expected_top.contains(tokenizer.decode({id}))) expected_top[tokenizer.decode({id})] = logprob;
      ASSERT_EQ(l["top_logprobs"][i].size(), expected_top.size()) << i;
      for (const auto& [token, logprob] : expected_top.items())
        EXPECT_NEAR(l["top_logprobs"][i].at(token).get<double>(), logprob.get<double>(), kTolerance) << i;
    }
    // The text decodes the tokens together (a character split over byte tokens is whole there).
    EXPECT_EQ(out[key]["text"], tokenizer.decode(ids));
  }
  for (const char* key : {"chat", "chat_stream"}) {
    SCOPED_TRACE(key);
    const Json& content = out[key]["content"];
    const std::vector<ReferenceToken> ref = reference_greedy(model, chat_prompt, kMaxTokens, top, chat_stops);
    const size_t shown = ref.size() - (ref.size() < size_t(kMaxTokens) ? 1 : 0);
    ASSERT_EQ(content.size(), shown);
    for (size_t i = 0; i < shown; ++i) {
      const std::string token = tokenizer.decode({ref[i].id});
      EXPECT_EQ(content[i]["token"], token) << i;
      EXPECT_EQ(content[i]["bytes"], bytes(token)) << i;
      EXPECT_NEAR(content[i]["logprob"].get<double>(), ref[i].logprob, kTolerance) << i;
      ASSERT_EQ(content[i]["top_logprobs"].size(), size_t(top)) << i;
      for (int k = 0; k < top; ++k) {
        EXPECT_EQ(content[i]["top_logprobs"][k]["token"], tokenizer.decode({ref[i].top[k].first})) << i << " " << k;
        EXPECT_NEAR(content[i]["top_logprobs"][k]["logprob"].get<double>(), ref[i].top[k].second, kTolerance) << i;
      }
    }
  }
  EXPECT_EQ(out["chat"]["content"], out["chat_stream"]["content"]);
}

// The text of the last element with this class in an HTML dump, entities decoded.
std::string last_text_of_class(const std::string& html, const std::string& cls) {
  const std::string open = "class=\"" + cls + "\">";
  const size_t at = html.rfind(open);
  if (at == std::string::npos) return "<no " + cls + ">";
  const size_t begin = at + open.size(), end = html.find("</div>", begin);
  std::string text = html.substr(begin, end - begin), out;
  for (size_t i = 0; i < text.size(); ++i) {
    bool replaced = false;
    for (const auto& [entity, c] : {std::pair{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&nbsp;", ' '}})
      if (text.compare(i, std::strlen(entity), entity) == 0) {
        out += c;
        i += std::strlen(entity) - 1;
        replaced = true;
        break;
      }
    if (!replaced) out += text[i];
  }
  return out;
}

TEST_F(Serve, ChatPageStreamsTheAnswerInChromium) {
  if (run_shell("command -v chromium").code != 0) GTEST_SKIP() << "chromium not installed (scripts/setup.sh)";
  const ServerProcess server(dir_, "");
  ASSERT_GT(server.port, 0);
  const std::string message = "Where is the cat?";
  const std::string url = "'http://127.0.0.1:" + std::to_string(server.port) + "/?q=Where%20is%20the%20cat%3F&temperature=0&max_tokens=" +
                          std::to_string(kMaxTokens) + "'";
  // Headless Chromium loads the page, which sends the message and streams the reply into it; the
  // DOM is taken once the reply has finished (the page disables Stop again when its stream ends),
  // waiting up to two minutes, and a screenshot of it kept for people to look at.
  const std::string finished = "'!!document.querySelector(\".message.assistant\") && document.getElementById(\"stop\").disabled'";
  std::filesystem::create_directories(CROSSMOE_ARTIFACT_DIR);
  const std::string shot = std::string(CROSSMOE_ARTIFACT_DIR) + "/chat_page.png";
  std::filesystem::remove(shot);
  const auto dom = run_shell("node " + std::string(CROSSMOE_SOURCE_DIR) + "/tests/serve/chromium_page.cjs " + url + " " +
                             finished + " 120 " + (dir_ / "chromium").string() + " " + shot + " 2>&1");
  ASSERT_EQ(dom.code, 0) << dom.out;
  const auto chatted = run_shell("printf '%s\\n' '" + message + "' | " + CROSSMOE_BIN + " chat " + (dir_ / "model").string() +
                                 " -n " + std::to_string(kMaxTokens) + " --temperature 0 2>/dev/null");
  ASSERT_EQ(chatted.code, 0);
  EXPECT_EQ(last_text_of_class(dom.out, "message user"), message);
  EXPECT_EQ(last_text_of_class(dom.out, "message assistant"), Json::parse(chatted.out)["content"].get<std::string>());
  EXPECT_EQ(dom.out.find("message error"), std::string::npos) << dom.out;
  EXPECT_TRUE(std::filesystem::exists(shot));
}

TEST_F(Serve, BadRequestsGetOpenAiErrors) {
  const ServerProcess server(dir_, std::string("--api-key ") + kKey + " --ctx 64 --max-body 4");
  ASSERT_GT(server.port, 0);
  auto c = server.client();
  const auto post = [&](const std::string& path, const std::string& body) {
    return c.Post(path.c_str(), body, "application/json");
  };
  auto r = post("/v1/completions", "{\"prompt\": ");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["type"], "invalid_request_error");
  r = post("/v1/completions", "[1, 2]");
  EXPECT_EQ(r->status, 400);
  r = post("/v1/completions", R"({"prompt": "The", "temperature": "hot"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["param"], "temperature");
  r = post("/v1/completions", R"({"prompt": 7})");
  EXPECT_EQ(r->status, 400);
  r = post("/v1/chat/completions", R"({"model": "x"})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["param"], "messages");
  r = post("/v1/chat/completions", R"({"messages": [{"content": "no role"}]})");
  EXPECT_EQ(r->status, 400);
  r = post("/v1/completions", R"({"prompt": "The", "max_tokens": 0})");
  EXPECT_EQ(r->status, 400);
  r = post("/v1/completions", R"({"prompt": "The", "stop": [1]})");
  EXPECT_EQ(r->status, 400);
  // logprobs: a count for completions, true plus top_logprobs (at most 20) for chat.
  r = post("/v1/completions", R"({"prompt": "The", "logprobs": true})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["param"], "logprobs");
  r = post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["param"], "top_logprobs");
  r = post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 21})");
  EXPECT_EQ(r->status, 400);
  // Context overflow: a prompt past --ctx 64, or a prompt and max_tokens that together are.
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "the cat sat ";
  r = post("/v1/completions", Json{{"prompt", long_prompt}}.dump());
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["code"], "context_length_exceeded");
  r = post("/v1/completions", R"({"prompt": "The cat", "max_tokens": 64})");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(error_of(r)["code"], "context_length_exceeded");
  // Unknown fields are ignored, as OpenAI's clients send extra ones.
  r = post("/v1/completions", R"({"prompt": "The", "max_tokens": 3, "temperature": 0, "user": "u", "echo_extra": 1})");
  EXPECT_EQ(r->status, 200);
  EXPECT_LE(Json::parse(r->body)["usage"]["completion_tokens"].get<int>(), 3);
  // Body over --max-body 4 KiB.
  r = post("/v1/completions", Json{{"prompt", std::string(5000, 'a')}}.dump());
  EXPECT_EQ(r->status, 413);
  r = c.Get("/v1/nothing");
  EXPECT_EQ(r->status, 404);

  // The key: missing or wrong is 401 everywhere but /health.
  auto anonymous = server.client(false);
  EXPECT_EQ(anonymous.Get("/v1/models")->status, 401);
  EXPECT_EQ(anonymous.Get("/metrics")->status, 401);
  EXPECT_EQ(anonymous.Get("/health")->status, 200);
  httplib::Headers wrong = {{"Authorization", std::string("Bearer ") + kKey + "x"}};
  EXPECT_EQ(anonymous.Get("/v1/models", wrong)->status, 401);
  EXPECT_EQ(c.Get("/v1/models")->status, 200);
}

// A model without tokenizer_config.json (`crossmoe init --tokenizer` of a tokenizer.json alone)
// serves completions; chat, which needs the template, is refused in words.
TEST_F(Serve, ModelWithoutTokenizerConfigServesCompletions) {
  const std::filesystem::path bare = dir_ / "bare";
  std::filesystem::create_directories(bare / "model");
  for (const auto& f : std::filesystem::directory_iterator(dir_ / "model"))
    if (f.path().filename() != "tokenizer_config.json")
      std::filesystem::copy_file(f.path(), bare / "model" / f.path().filename(), std::filesystem::copy_options::overwrite_existing);
  const ServerProcess server(bare, "");
  ASSERT_GT(server.port, 0);
  auto c = server.client(false);
  auto r = c.Post("/v1/completions", R"({"prompt": "The cat", "max_tokens": 4})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  r = c.Post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("no chat template"), std::string::npos) << r->body;
}

TEST_F(Serve, FullQueueIs503WithRetryAfter) {
  const ServerProcess server(dir_, "--max-queue 0");
  ASSERT_GT(server.port, 0);
  auto c = server.client(false);
  const auto r = c.Post("/v1/completions", R"({"prompt": "The", "max_tokens": 2})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_TRUE(error_of(r).contains("message"));
  EXPECT_EQ(c.Get("/health")->status, 200);
}

TEST_F(Serve, RequestPastItsTimeLimitIs504) {
  const ServerProcess server(dir_, "--timeout 0.001");
  ASSERT_GT(server.port, 0);
  auto c = server.client(false);
  // This prompt's greedy reply has no end-of-text token in its first dozen tokens (the first
  // test), so it is still running when its millisecond is up.
  const auto r = c.Post("/v1/completions", R"({"prompt": "The cat sat", "max_tokens": 200, "temperature": 0})",
                        "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 504) << r->body;
  EXPECT_EQ(error_of(r)["type"], "timeout");
}

// The value of one metric line in /metrics.
double metric(httplib::Client& c, const std::string& name) {
  const auto r = c.Get("/metrics");
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  ADD_FAILURE() << "no metric " << name;
  return -1;
}

TEST_F(Serve, ClientThatLeavesMidStreamFreesItsBlocks) {
  const ServerProcess server(dir_, "");
  ASSERT_GT(server.port, 0);
  // A long streamed completion over a raw socket, closed after two events.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(uint16_t(server.port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  const std::string body = R"({"prompt": "The cat", "max_tokens": 200, "stream": true})";
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(write(fd, request.data(), request.size()), ssize_t(request.size()));
  std::string received;
  char buffer[256];
  for (ssize_t n; received.find("data:", received.find("data:") + 1) == std::string::npos &&
                  (n = read(fd, buffer, sizeof buffer)) > 0;)
    received.append(buffer, size_t(n));
  close(fd);
  EXPECT_NE(received.find("200 OK"), std::string::npos) << received;
  auto watcher = server.client(false);
  bool freed = false;
  for (int i = 0; i < 100 && !freed; ++i) {
    freed = metric(watcher, "crossmoe_running_sequences") == 0 && metric(watcher, "crossmoe_kv_blocks_in_use") == 0;
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(freed);
  EXPECT_LT(metric(watcher, "crossmoe_generation_tokens_total"), 200);
  // And it goes on serving.
  EXPECT_EQ(watcher.Post("/v1/completions", R"({"prompt": "The", "max_tokens": 2})", "application/json")->status, 200);
}

// Resident memory of a process, in KiB.
long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

TEST_F(Serve, RequestsPreemptedWhenThePoolRunsOutGetTheirOwnText) {
  // A pool of about 10 blocks, requests that each need 2 blocks by the end and 1 to start: sixteen
  // of them at once outgrow the pool mid-decode, so some are preempted and run again later. (Eight
  // were once enough; with faster decoding, clients started late on a loaded machine could find
  // the first ones done and the pool never full.) Each must still get exactly the greedy text it
  // gets alone.
  const ModelConfig config = Model(dir_ / "model").config();
  const int64_t per_token = KvPool::bytes_per_position(config);
  // Whole key tiles, so that the pool's blocks hold no padding.
  const int block = int((int64_t(1) << 20) / (10 * per_token)) / kernels::kKeyTile * kernels::kKeyTile;
  const int64_t blocks = KvPool::blocks_for_bytes(config, block, int64_t(1) << 20);
  ASSERT_GE(blocks, 8);
  ASSERT_LE(2 * block, 256) << "the model's context must hold two blocks";
  const ServerProcess server(dir_, "--kv-memory 1 --block-size " + std::to_string(block));
  ASSERT_GT(server.port, 0);
  auto c = server.client(false);
  // Distinct from the first token on, so no two share a cached block.
  std::vector<std::string> prompts;
  for (int i = 0; i < 16; ++i) prompts.push_back(std::string(1, char('A' + i)) + " the cat sat on the mat and");
  const auto ask = [&](httplib::Client& client, const std::string& prompt) {
    const Json body = {{"prompt", prompt}, {"max_tokens", 2 * block - 24}, {"temperature", 0}};
    const auto r = client.Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no answer");
    return r && r->status == 200 ? Json::parse(r->body) : Json();
  };
  std::vector<Json> alone, together(prompts.size());
  for (const std::string& p : prompts) alone.push_back(ask(c, p));
  EXPECT_EQ(metric(c, "crossmoe_preemptions_total"), 0);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i)
    clients.emplace_back([&, i] {
      auto own = server.client(false);
      together[i] = ask(own, prompts[i]);
    });
  for (auto& t : clients) t.join();
  EXPECT_GT(metric(c, "crossmoe_preemptions_total"), 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(together[i]["choices"][0]["text"], alone[i]["choices"][0]["text"]) << i;
    EXPECT_EQ(together[i]["usage"], alone[i]["usage"]) << i;
  }
  // Everything given back once they are done (the gauges follow at the end of the step that
  // sent the last token, so they may lag the answers by a moment).
  bool freed = false;
  for (int i = 0; i < 100 && !freed; ++i) {
    freed = metric(c, "crossmoe_running_sequences") == 0 && metric(c, "crossmoe_kv_blocks_in_use") == 0;
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(freed);
}

TEST_F(Serve, GarbageRequestsGetClientErrorsAndTheServerKeepsServing) {
  const ServerProcess server(dir_, "--ctx 128");
  ASSERT_GT(server.port, 0);
  auto c = server.client(false);
  const std::string ok_body = R"({"prompt": "The cat", "max_tokens": 4, "temperature": 0})";
  ASSERT_EQ(c.Post("/v1/completions", ok_body, "application/json")->status, 200);
  const long baseline = rss_kib(server.pid);
  // Random bytes, JSON with fields of every wrong type, invalid UTF-8, mutations of a good body.
  std::mt19937 rng(5);
  const std::vector<std::string> values = {"null", "true", "-1", "1e999", "\"x\"", "[]", "{}", "[1,\"a\"]", "99999999999",
                                           "0.5", "\"\xff\xfe\"", "{\"a\": 1}"};
  const std::vector<std::string> keys = {"prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
                                         "stream", "n", "presence_penalty", "logprobs", "max_completion_tokens"};
  std::map<int, int> statuses;
  for (int i = 0; i < 1000; ++i) {
    std::string body;
    switch (i % 3) {
      case 0:
        for (int n = int(rng() % 200); n > 0; --n) body += char(rng() % 256);
        break;
      case 1: {
        body = "{";
        for (int n = 1 + int(rng() % 4); n > 0; --n)
          body += "\"" + keys[rng() % keys.size()] + "\": " + values[rng() % values.size()] + (n > 1 ? ", " : "");
        body += "}";
        break;
      }
      default:
        body = ok_body;
        for (int n = 1 + int(rng() % 3); n > 0; --n) body[rng() % body.size()] = char(rng() % 256);
    }
    const auto r = c.Post(i % 2 ? "/v1/completions" : "/v1/chat/completions", body, "application/json");
    ASSERT_TRUE(r) << "no answer to request " << i;
    ++statuses[r->status];
    EXPECT_TRUE(r->status == 200 || r->status == 400) << r->status << " for " << body;
    if (r->status == 400) EXPECT_TRUE(Json::parse(r->body)["error"].contains("message"));
  }
  EXPECT_GT(statuses[400], 900);
  EXPECT_EQ(c.Post("/v1/completions", ok_body, "application/json")->status, 200);
  EXPECT_EQ(metric(c, "crossmoe_running_sequences"), 0);
  EXPECT_EQ(metric(c, "crossmoe_kv_blocks_in_use"), 0);
  // Memory back near where it was: nothing per request is kept (a few MB of allocator slack).
  EXPECT_LT(rss_kib(server.pid) - baseline, 16 * 1024) << "baseline " << baseline << " KiB";
}

TEST(ServeSecret, ComparesWholeStrings) {
  EXPECT_TRUE(serve::same_secret("abc", "abc"));
  EXPECT_FALSE(serve::same_secret("abd", "abc"));
  EXPECT_FALSE(serve::same_secret("ab", "abc"));
  EXPECT_FALSE(serve::same_secret("abcabc", "abc"));
  EXPECT_FALSE(serve::same_secret("", "abc"));
}

}  // namespace
}  // namespace crossmoe
