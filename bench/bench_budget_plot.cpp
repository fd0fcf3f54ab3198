// Plots of bench/memory_budget.sh's output (docs/benchmarks.md), through the plotter the trainer's
// loss.svg uses: decode tokens/s and the decode hit rate against the memory budget, for every
// model in the output, all in memory beside on-demand loading (--prefetch off) and prefetch.
// Usage: bench_budget_plot OUT_PREFIX BENCH_OUTPUT...   Writes OUT_PREFIX_decode.svg and
// OUT_PREFIX_hit_rate.svg against the budget as a share of each model's routed-expert bytes, and
// OUT_PREFIX_decode_bytes.svg and OUT_PREFIX_hit_rate_bytes.svg against the budget in bytes
// (models compared at equal memory). Several outputs may be given (e.g. a run and the rest of a
// run that stopped); a setting measured again in a later file replaces the earlier one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "util/error.hpp"
#include "util/svg_plot.hpp"

using namespace crossmoe;

namespace {

// What a setting measured: bench's median decode tokens/s, and the hit rate under a budget.
struct Result {
  double decode_tok_s = NAN;
  double hit_rate = NAN;
  double budget_bytes = NAN;  // what the budget resolved to
};

// A model's short name: its directory's, or its parent's for trained_routing.sh's DIR/NAME/model.
std::string model_name(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();
  if (p.filename() == "model" && p.has_parent_path()) p = p.parent_path();
  return p.filename().string();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_budget_plot OUT_PREFIX BENCH_OUTPUT...\n");
    return 2;
  }
  try {
    // model -> (all in memory | budget percent, prefetch) -> result; budget 0 is all in memory.
    std::map<std::string, std::map<std::pair<double, std::string>, Result>> models;
    for (int f = 2; f < argc; ++f) {
      std::ifstream in(argv[f]);
      require(bool(in), std::string("cannot read ") + argv[f]);
      // "== MODEL: decode" opens the all-in-memory bench, "-- MODEL --memory-budget B% --prefetch P"
      // a budgeted one; the JSON lines after it are that bench's (none when it failed or timed out).
      std::string model;
      std::pair<double, std::string> setting;
      int line_number = 0;
      for (std::string line; std::getline(in, line);) {
        ++line_number;
        const std::string where = std::string(argv[f]) + ":" + std::to_string(line_number);
        if (line.rfind("== ", 0) == 0 && line.size() > 11 && line.compare(line.size() - 8, 8, ": decode") == 0) {
          model = model_name(line.substr(3, line.size() - 11));
          setting = {0.0, "in memory"};
        } else if (line.rfind("== ", 0) == 0) {  // the load and dd lines: no bench results follow
          model.clear();
        } else if (line.rfind("-- ", 0) == 0) {
          const size_t budget = line.find(" --memory-budget "), prefetch = line.find(" --prefetch ");
          require(budget != std::string::npos && prefetch != std::string::npos && prefetch > budget,
                  where + ": expected '-- MODEL --memory-budget B --prefetch P'");
          const std::string b = line.substr(budget + 17, prefetch - budget - 17);
          require(!b.empty() && b.back() == '%', where + ": the plot needs budgets in percent, not '" + b + "'");
          model = model_name(line.substr(3, budget - 3));
          setting = {std::stod(b.substr(0, b.size() - 1)), line.substr(prefetch + 12) == "on" ? "prefetch" : "on demand"};
          models[model].erase(setting);  // measured again: a failed rerun leaves no stale point
        } else if (!line.empty() && line[0] == '{' && !model.empty()) {
          const nlohmann::json j = nlohmann::json::parse(line);
          Result& r = models[model][setting];
          if (j.contains("decode_tok_s")) r.decode_tok_s = j.at(nlohmann::json::json_pointer("/decode_tok_s/median")).get<double>();
          if (j.contains("decode_hit_rate")) r.hit_rate = j.at("decode_hit_rate").get<double>();
          if (j.contains("memory_budget_bytes")) r.budget_bytes = j.at("memory_budget_bytes").get<double>();
        }
      }
    }
    require(!models.empty(), "no bench/memory_budget.sh results in the given files");

    // Two x axes, both log2: the budget as a share of each model's routed-expert bytes (100, 50,
    // 25, 10% fall nearly evenly; a tick per measured share), and the budget in bytes (models whose
    // experts differ in number compared at equal memory; a tick per power of two of GB).
    struct Axis {
      std::string label, suffix;
      double (*x)(const std::pair<double, std::string>& setting, const Result& result);
      std::vector<PlotTick> ticks;
      double low = INFINITY, high = -INFINITY;  // the measured x range, for the in-memory lines
    };
    Axis share{"memory budget (share of the routed experts' bytes)", "",
               [](const std::pair<double, std::string>& setting, const Result&) { return std::log2(setting.first); }, {}};
    Axis bytes{"memory budget for the routed experts (GB)", "_bytes",
               [](const std::pair<double, std::string>&, const Result& r) { return std::log2(r.budget_bytes / 1e9); }, {}};
    std::set<double> shares;
    for (const auto& [name, settings] : models)
      for (const auto& [setting, result] : settings) {
        if (setting.first <= 0) continue;
        shares.insert(setting.first);
        for (Axis* a : {&share, &bytes}) {
          const double x = a->x(setting, result);
          if (std::isfinite(x)) a->low = std::min(a->low, x), a->high = std::max(a->high, x);
        }
      }
    require(!shares.empty(), "no budgeted settings in the given files");
    for (double b : shares) {
      char label[32];
      std::snprintf(label, sizeof label, "%g%%", b);
      share.ticks.push_back({std::log2(b), label});
    }
    if (std::isfinite(bytes.low))
      for (double k = std::floor(bytes.low); k <= std::ceil(bytes.high); ++k) {
        char label[32];
        std::snprintf(label, sizeof label, "%g", std::exp2(k));
        bytes.ticks.push_back({k, label});
      }
    // Decode speeds on a log2 y axis labelled in powers of two (they span 2 to 90 tokens/s, and
    // the ratios between modes are what matters); hit rates in percent from 0 to 100.
    enum class Scale { Log2, Percent };
    const auto plot = [&](const Axis& axis, const std::string& title, double Result::*field, Scale scale,
                          const std::string& file) {
      LinePlot p;
      p.title = title;
      p.x_label = axis.label;
      p.x_ticks = axis.ticks;
      const auto y = [&](double v) { return scale == Scale::Log2 ? std::log2(v) : 100 * v; };
      double low = INFINITY, high = -INFINITY;
      // The in-memory lines last, so that a series has the same colour in every plot.
      for (const bool in_memory : {false, true})
        for (const auto& [name, settings] : models)
          for (const std::string& mode : in_memory ? std::vector<std::string>{"in memory"}
                                                  : std::vector<std::string>{"on demand", "prefetch"}) {
            PlotSeries s{name + ": " + mode, {}, 1.8, true};
            for (const auto& [setting, result] : settings) {
              if (setting.second != mode || !std::isfinite(y(result.*field))) continue;
              low = std::min(low, y(result.*field)), high = std::max(high, y(result.*field));
              if (setting.first <= 0) {  // a level line across the axis
                s.points.push_back({axis.low, y(result.*field)});
                s.points.push_back({axis.high, y(result.*field)});
                s.markers = false;
              } else if (const double x = axis.x(setting, result); std::isfinite(x)) {
                s.points.push_back({x, y(result.*field)});
              }
            }
            std::sort(s.points.begin(), s.points.end());
            if (!s.points.empty()) p.series.push_back(std::move(s));
          }
      if (scale == Scale::Percent)
        for (int v = 0; v <= 100; v += 25) p.y_ticks.push_back({double(v), std::to_string(v)});
      else if (std::isfinite(low))
        for (double k = std::floor(low); k <= std::ceil(high); ++k) {
          char label[32];
          std::snprintf(label, sizeof label, "%g", std::exp2(k));
          p.y_ticks.push_back({k, label});
        }
      write_svg(p, std::string(argv[1]) + file + axis.suffix + ".svg");
    };
    for (const Axis* axis : {&share, &bytes}) {
      if (!std::isfinite(axis->low)) continue;  // outputs without the cache lines have no bytes
      plot(*axis, "decode tokens/s under --memory-budget (bench median; log scale)", &Result::decode_tok_s, Scale::Log2,
           "_decode");
      plot(*axis, "expert cache hit rate in decode (%)", &Result::hit_rate, Scale::Percent, "_hit_rate");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
