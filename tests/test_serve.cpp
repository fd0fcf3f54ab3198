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
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_run.hpp"
#include "serve/server.hpp"
#include "temp_dir.hpp"

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
  // Headless Chromium loads the page, which sends the message and streams the reply into it.
  const std::string chromium = "chromium --headless --no-sandbox --disable-gpu --user-data-dir=" +
                               (dir_ / "chromium").string() + " --virtual-time-budget=30000 ";
  const auto dom = run_shell(chromium + "--dump-dom " + url + " 2>/dev/null");
  ASSERT_EQ(dom.code, 0);
  const auto chatted = run_shell("printf '%s\\n' '" + message + "' | " + CROSSMOE_BIN + " chat " + (dir_ / "model").string() +
                                 " -n " + std::to_string(kMaxTokens) + " --temperature 0 2>/dev/null");
  ASSERT_EQ(chatted.code, 0);
  EXPECT_EQ(last_text_of_class(dom.out, "message user"), message);
  EXPECT_EQ(last_text_of_class(dom.out, "message assistant"), Json::parse(chatted.out)["content"].get<std::string>());
  EXPECT_EQ(dom.out.find("message error"), std::string::npos) << dom.out;
  // A screenshot of the page with its answer, kept for people to look at.
  std::filesystem::create_directories(CROSSMOE_ARTIFACT_DIR);
  const std::string shot = std::string(CROSSMOE_ARTIFACT_DIR) + "/chat_page.png";
  run_shell(chromium + "--window-size=900,600 --screenshot=" + shot + " " + url + " > /dev/null 2>&1");
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

TEST(ServeSecret, ComparesWholeStrings) {
  EXPECT_TRUE(serve::same_secret("abc", "abc"));
  EXPECT_FALSE(serve::same_secret("abd", "abc"));
  EXPECT_FALSE(serve::same_secret("ab", "abc"));
  EXPECT_FALSE(serve::same_secret("abcabc", "abc"));
  EXPECT_FALSE(serve::same_secret("", "abc"));
}

}  // namespace
}  // namespace crossmoe
