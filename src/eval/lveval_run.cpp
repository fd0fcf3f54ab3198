#include "eval/lveval_run.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "eval/lveval_datasets.hpp"
#include "runtime/generate.hpp"
#include "tokenizer/chat_template.hpp"
#include "util/error.hpp"
#include "util/json_file.hpp"
#include "util/progress.hpp"
#include "util/svg_plot.hpp"

namespace crossmoe::eval {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Python's round(x, 2): the exact binary value rounded to two decimals, ties to even, which is
// what glibc's printf does.
double round2(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", x);
  return std::strtod(buf, nullptr);
}

std::string format2(const std::optional<double>& x) {
  if (!x) return "no score";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", *x);
  return buf;
}

// Each non-blank line of a text file with its number.
template <typename F>
void for_each_line(const fs::path& path, F&& f) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), "cannot open " + path.string());
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    f(n, line);
  }
}

// A predictions file cut back to its last complete line: what a killed run was writing is gone
// and will be redone.
void drop_partial_last_line(const fs::path& path) {
  if (!fs::exists(path)) return;
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (text.empty() || text.back() == '\n') return;
  const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  in.close();
  fs::resize_file(path, keep);
  log_info(path.string() + ": dropped an incomplete last line (an interrupted run)");
}

std::set<int> lines_done(const fs::path& path) {
  std::set<int> done;
  if (!fs::exists(path)) return done;
  for_each_line(path, [&](int n, const std::string& line) {
    try {
      const json j = parse_jsonl_object(line);
      require(j.contains("line") && j["line"].is_number_integer(), "no 'line' field");
      done.insert(j["line"].get<int>());
    } catch (const Error& e) {
      throw Error(path.string() + ":" + std::to_string(n) + ": " + e.what() + " (not a predictions file of crossmoe?)");
    }
  });
  return done;
}

// The prompt's tokens with at most `room` of them: LongBench's middle truncation to max_length,
// then, for chat models, the chat template around it; encoded again as LV-Eval does (with the
// tokenizer's special tokens for a plain prompt; a rendered chat already has them). If that
// grew past the session's room, the middle is cut once more on the ids.
std::vector<int> prompt_ids(Tokenizer& tokenizer, const nlohmann::json& chat_config, const std::string& prompt,
                            int max_length, int room, bool& truncated) {
  std::string text = truncate_middle(tokenizer, prompt, max_length);
  truncated = text != prompt;
  if (!chat_config.is_null()) {
    ChatRequest request;
    request.messages.push_back({{"role", "user"}, {"content", text}});
    text = apply_chat_template(chat_config, request);
  }
  std::vector<int> ids = tokenizer.encode(text, chat_config.is_null());
  if (int(ids.size()) > room) {
    const size_t half = size_t(room / 2);
    std::vector<int> cut(ids.begin(), ids.begin() + std::ptrdiff_t(half));
    cut.insert(cut.end(), ids.end() - std::ptrdiff_t(room - int(half)), ids.end());
    ids = std::move(cut);
    truncated = true;
  }
  return ids;
}

}  // namespace

ScoredFile score_predictions(const LvMetric& metric, const fs::path& file, const std::string& dataset) {
  ScoredFile out;
  out.name = file.filename().string();
  if (out.name.size() > 6 && out.name.compare(out.name.size() - 6, 6, ".jsonl") == 0) out.name.resize(out.name.size() - 6);
  const std::string stem = lveval_file_stem(file);
  out.dataset = dataset.empty() ? dataset_of_file_stem(stem) : dataset;
  out.level = level_of_file_stem(stem);
  const LvDataset& d = lveval_dataset(out.dataset);
  double total = 0;
  for_each_line(file, [&](int n, const std::string& line) {
    try {
      const json j = parse_jsonl_object(line);
      const std::string pred = string_field(j, "pred");
      const std::vector<std::string> answers = string_list(j, "answers", true);
      const std::string keywords = j.contains("gold_ans") && !j["gold_ans"].is_null() ? string_field(j, "gold_ans") : "";
      // Only the first answer counts (the official loop breaks after it); none scores 0.
      const double s = answers.empty() ? 0.0 : metric.score(d.metric, pred, answers[0], keywords);
      total += s;
      ++out.samples;
    } catch (const Error& e) {
      out.errors.push_back({n, e.what()});
    }
  });
  if (out.samples > 0) out.score = round2(100 * total / out.samples);
  return out;
}

std::vector<ScoredFile> run_lveval(const Model& model, Tokenizer& tokenizer, const LvMetric& metric,
                                   const LvEvalOptions& o) {
  require(fs::is_directory(o.data_dir), o.data_dir.string() + " is not a directory");
  const ModelConfig& c = model.config();
  const int max_length = o.max_length > 0 ? o.max_length : c.max_position_embeddings - 500;
  require(max_length >= 16, "the prompt budget is " + std::to_string(max_length) +
                                " tokens (the model's window minus 500 for the answer); give --max-length");
  const int context = max_length + 500;  // LV-Eval's room for the answer
  for (const auto& [name, t] : o.prompts) {
    lveval_dataset(name);
    build_prompt(t, "", "");  // a bad template fails now, not after an hour
  }
  for (const auto& name : o.datasets) lveval_dataset(name);

  // The data files to run, in name order.
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(o.data_dir)) {
    if (e.path().extension() != ".jsonl") continue;
    const std::string stem = lveval_file_stem(e.path()), dataset = dataset_of_file_stem(stem);
    const bool known = std::any_of(lveval_datasets().begin(), lveval_datasets().end(),
                                   [&](const LvDataset& d) { return d.name == dataset; });
    if (!known) {
      log_info("skipping " + e.path().string() + ": not named {dataset}_{level}.jsonl after an LV-Eval dataset");
      continue;
    }
    const auto wanted = [](const std::vector<std::string>& list, const std::string& v) {
      return list.empty() || std::find(list.begin(), list.end(), v) != list.end();
    };
    if (wanted(o.datasets, dataset) && wanted(o.levels, level_of_file_stem(stem))) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  require(!files.empty(), "no LV-Eval files ({dataset}_{level}.jsonl) to run in " + o.data_dir.string());

  // A rerun must be the same run: predictions of another model or budget would be mixed in.
  fs::create_directories(o.out_dir / "predictions");
  const json settings = {{"model", fs::absolute(model.dir()).lexically_normal().string()},
                         {"max_length", max_length},
                         {"prompts", o.prompts},
                         {"chat", !o.chat_config.is_null()}};
  const fs::path settings_file = o.out_dir / "run.json";
  if (fs::exists(settings_file)) {
    require(read_json_file(settings_file) == settings,
            o.out_dir.string() + " holds a run with other settings (" + settings_file.string() +
                "); give another --out or remove it");
  } else {
    write_json_file(settings_file, settings);
  }

  InferenceSession session(model, context);
  Sampler greedy(SamplingParams{});
  // The model's eos ids, and for chat models the end-of-turn token tokenizer_config names.
  std::vector<int> stop = c.eos_token_ids;
  if (o.chat_config.contains("eos_token") && o.chat_config["eos_token"].is_string()) {
    const int eos = tokenizer.token_to_id(o.chat_config["eos_token"].get<std::string>());
    if (eos >= 0) stop.push_back(eos);
  }
  std::vector<ScoredFile> scores;
  for (const fs::path& data : files) {
    const std::string stem = data.stem().string();
    const LvDataset& d = lveval_dataset(dataset_of_file_stem(lveval_file_stem(data)));
    const std::string& prompt_template = o.prompts.count(d.name) ? o.prompts.at(d.name) : d.prompt;
    const LvFile file = read_lveval_jsonl(data);
    for (const auto& e : file.errors) log_info(data.string() + ":" + std::to_string(e.line) + ": " + e.message);
    const fs::path pred_path = o.out_dir / "predictions" / (stem + ".jsonl");
    drop_partial_last_line(pred_path);
    const std::set<int> done = lines_done(pred_path);
    const size_t n = o.limit > 0 ? std::min(file.samples.size(), size_t(o.limit)) : file.samples.size();
    int64_t todo = 0;
    for (size_t i = 0; i < n; ++i) todo += done.count(file.sample_lines[i]) ? 0 : 1;
    log_info(stem + ": " + std::to_string(n) + " samples, " + std::to_string(n - size_t(todo)) + " already predicted");
    std::ofstream out(pred_path, std::ios::app);
    require(out.good(), "cannot write " + pred_path.string());
    ProgressBar bar(todo);
    int64_t finished = 0;
    for (size_t i = 0; i < n; ++i) {
      const LvSample& s = file.samples[i];
      const int line = file.sample_lines[i];
      if (done.count(line)) continue;
      bool truncated = false;
      const std::vector<int> ids =
          prompt_ids(tokenizer, o.chat_config, build_prompt(prompt_template, s.context, s.input), max_length,
                     context - d.max_new_tokens, truncated);
      session.reset();
      const GenerationResult r = generate(session, ids, d.max_new_tokens, greedy, stop);
      std::vector<int> answer = r.tokens;
      if (!answer.empty() && std::find(stop.begin(), stop.end(), answer.back()) != stop.end()) answer.pop_back();
      const std::string pred = tokenizer.decode(answer, true);
      json row = {{"line", line},          {"pred", pred},         {"answers", s.answers},
                  {"gold_ans", s.answer_keywords}, {"dataset", d.name}, {"length", s.length},
                  {"prompt_tokens", ids.size()}, {"truncated", truncated}};
      try {
        row["score"] = s.answers.empty() ? 0.0 : metric.score(d.metric, pred, s.answers[0], s.answer_keywords);
      } catch (const Error& e) {
        row["score"] = nullptr;
        row["error"] = e.what();
      }
      out << row.dump() << "\n";
      out.flush();
      char status[160];
      std::snprintf(status, sizeof status, "%s, prefill %.0f tok/s", stem.c_str(), r.stats.prefill_tokens_per_second());
      bar.update(++finished, status);
    }
    bar.finish(stem);
    out.close();
    ScoredFile scored = score_predictions(metric, pred_path, d.name);
    for (const auto& e : file.errors) scored.errors.push_back({e.line, "data: " + e.message});
    scores.push_back(std::move(scored));
  }
  return scores;
}

namespace {
struct Grid {
  std::vector<std::string> datasets, levels;      // rows in the official order, columns by length
  // A file's score; a file whose lines could none be scored is there without one.
  std::map<std::pair<std::string, std::string>, std::optional<double>> cell;
  std::map<std::string, std::optional<double>> average;  // per level, over the scored files
};

Grid grid_of(const std::vector<ScoredFile>& scores) {
  Grid g;
  for (const auto& d : lveval_datasets())
    if (std::any_of(scores.begin(), scores.end(), [&](const ScoredFile& s) { return s.dataset == d.name; }))
      g.datasets.push_back(d.name);
  for (const auto& s : scores) {
    if (std::find(g.levels.begin(), g.levels.end(), s.level) == g.levels.end()) g.levels.push_back(s.level);
    g.cell[{s.dataset, s.level}] = s.score;
  }
  std::sort(g.levels.begin(), g.levels.end(),
            [](const std::string& a, const std::string& b) { return level_thousands(a) < level_thousands(b); });
  for (const auto& level : g.levels) {
    double sum = 0;
    int count = 0;
    for (const auto& d : g.datasets)
      if (g.cell.count({d, level}) && g.cell.at({d, level})) sum += *g.cell.at({d, level}), ++count;
    g.average[level] = count > 0 ? std::optional<double>(round2(sum / count)) : std::nullopt;
  }
  return g;
}
}  // namespace

std::string report_table(const std::vector<ScoredFile>& scores) {
  const Grid g = grid_of(scores);
  std::ostringstream s;
  s << "| dataset |";
  for (const auto& l : g.levels) s << " " << (l.empty() ? "(no level)" : l) << " |";
  s << "\n|---|";
  for (size_t i = 0; i < g.levels.size(); ++i) s << "---:|";
  s << "\n";
  for (const auto& d : g.datasets) {
    s << "| " << d << " |";
    for (const auto& l : g.levels) s << " " << (g.cell.count({d, l}) ? format2(g.cell.at({d, l})) : "-") << " |";
    s << "\n";
  }
  s << "| **average** |";
  for (const auto& l : g.levels) s << " **" << format2(g.average.at(l)) << "** |";
  s << "\n";
  return s.str();
}

void write_report(const std::vector<ScoredFile>& scores, const fs::path& out_dir, const std::string& title) {
  fs::create_directories(out_dir);
  const Grid g = grid_of(scores);
  std::ostringstream md;
  md << "# LV-Eval: " << title << "\n\nScore per dataset and length level (the official metric, mean x 100; a file none of "
        "whose lines could be scored has no score and is left out of the average):\n\n"
     << report_table(scores) << "\n| file | score | samples scored | bad lines |\n|---|---:|---:|---:|\n";
  for (const auto& s : scores)
    md << "| " << s.name << " | " << format2(s.score) << " | " << s.samples << " | " << s.errors.size() << " |\n";
  for (const auto& s : scores)
    for (const auto& e : s.errors) md << "\n- " << s.name << " line " << e.line << ": " << e.message;
  md << "\n";
  std::ofstream(out_dir / "report.md") << md.str();

  json results = json::array();
  for (const auto& s : scores) {
    json errors = json::array();
    for (const auto& e : s.errors) errors.push_back({{"line", e.line}, {"message", e.message}});
    results.push_back({{"file", s.name}, {"dataset", s.dataset}, {"level", s.level}, {"samples", s.samples},
                       {"score", s.score ? json(*s.score) : json(nullptr)}, {"bad_lines", errors}});
  }
  json averages = json::object();
  for (const auto& [level, average] : g.average) averages[level] = average ? json(*average) : json(nullptr);
  write_json_file(out_dir / "results.json", {{"files", results}, {"average_by_level", averages}});

  // Score against length: one line per dataset, the average thicker; x is log2 of the level.
  LinePlot plot;
  plot.title = "LV-Eval score against length: " + title;
  plot.x_label = "length level (words)";
  plot.y_from_zero = true;
  const auto x_of = [](const std::string& level) { return std::log2(std::max(1, level_thousands(level))); };
  for (const auto& l : g.levels) plot.x_ticks.push_back({x_of(l), l});
  for (const auto& d : g.datasets) {
    PlotSeries s{d, {}, 1.2, true};
    for (const auto& l : g.levels)
      if (g.cell.count({d, l}) && g.cell.at({d, l})) s.points.push_back({x_of(l), *g.cell.at({d, l})});
    plot.series.push_back(std::move(s));
  }
  PlotSeries avg{"average", {}, 3.0, true};
  for (const auto& l : g.levels)
    if (g.average.at(l)) avg.points.push_back({x_of(l), *g.average.at(l)});
  plot.series.push_back(std::move(avg));
  write_svg(plot, out_dir / "score_by_length.svg");
}

}  // namespace crossmoe::eval
