// Plots of bench/serve_load.sh's output (docs/benchmarks.md), through the plotter the trainer's
// loss.svg uses: total tokens/s, time to first token and inter-token latency against the number
// of concurrent clients, batching beside one-at-a-time serving.
// Usage: bench_serve_plot LOAD_OUTPUT OUT_PREFIX   (writes OUT_PREFIX_throughput.svg,
// OUT_PREFIX_ttft.svg, OUT_PREFIX_inter_token.svg)
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "util/error.hpp"
#include "util/svg_plot.hpp"

using namespace crossmoe;

namespace {

const char* mode_name(int max_batch) { return max_batch == 1 ? "one at a time" : "batched"; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: bench_serve_plot LOAD_OUTPUT OUT_PREFIX\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1]);
    require(bool(in), std::string("cannot read ") + argv[1]);
    // Lines of the run: "# --max-batch N" opens a server's section, then one JSON object per
    // concurrency. A concurrency measured again (another max_tokens) keeps its first line.
    std::map<int, std::map<int, nlohmann::json>> runs;  // max batch -> clients -> result
    int max_batch = 0;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("# --max-batch ", 0) == 0) {
        max_batch = std::stoi(line.substr(14));
      } else if (!line.empty() && line[0] == '{') {
        require(max_batch > 0, std::string(argv[1]) + ": a result before any '# --max-batch N' line");
        const nlohmann::json result = nlohmann::json::parse(line);
        runs[max_batch].emplace(result.at("clients").get<int>(), result);
      }
    }
    require(!runs.empty(), std::string(argv[1]) + " holds no results of bench/serve_load.sh");

    // Clients on a log2 axis, one tick per measured count.
    std::map<int, bool> counts;
    for (const auto& [batch, results] : runs)
      for (const auto& [clients, result] : results) counts[clients] = true;
    std::vector<PlotTick> ticks;
    for (const auto& [clients, unused] : counts) ticks.push_back({std::log2(double(clients)), std::to_string(clients)});
    const auto plot = [&](const std::string& title, const std::vector<std::pair<std::string, std::string>>& fields,
                          double scale, const std::string& file) {
      LinePlot p;
      p.title = title;
      p.x_label = "concurrent streaming clients";
      p.x_ticks = ticks;
      p.y_from_zero = true;
      for (const auto& [batch, results] : runs)
        for (const auto& [label, path] : fields) {
          PlotSeries s{std::string(mode_name(batch)) + (label.empty() ? "" : " " + label), {}, 1.8, true};
          for (const auto& [clients, result] : results) {
            const nlohmann::json& v = result.at(nlohmann::json::json_pointer(path));
            if (v.is_number()) s.points.push_back({std::log2(double(clients)), v.get<double>() * scale});
          }
          p.series.push_back(std::move(s));
        }
      write_svg(p, std::string(argv[2]) + file);
    };
    plot("crossmoe serve: generated tokens/s over all clients", {{"", "/tokens_per_second"}}, 1, "_throughput.svg");
    plot("crossmoe serve: time to first token (s)", {{"p50", "/ttft_ms/p50"}, {"p90", "/ttft_ms/p90"}}, 1e-3,
         "_ttft.svg");
    plot("crossmoe serve: inter-token latency (ms)", {{"p50", "/itl_ms/p50"}, {"p90", "/itl_ms/p90"}}, 1,
         "_inter_token.svg");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
