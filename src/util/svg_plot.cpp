#include "util/svg_plot.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "util/atomic_file.hpp"
#include "util/error.hpp"

namespace crossmoe {

namespace {
const char* const kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                                "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}
}  // namespace

std::string render_svg(const LinePlot& plot) {
  double x0 = 0, x1 = 0, y0 = plot.y_from_zero ? 0 : 1e300, y1 = -1e300;
  bool any = false;
  for (const auto& s : plot.series)
    for (const auto& p : s.points) {
      x0 = any ? std::min(x0, p[0]) : p[0];
      x1 = any ? std::max(x1, p[0]) : p[0];
      y0 = std::min(y0, p[1]), y1 = std::max(y1, p[1]);
      any = true;
    }
  if (!any && plot.y_ticks.empty()) y0 = 0, y1 = 1;
  for (const auto& t : plot.y_ticks) y0 = std::min(y0, t.value), y1 = std::max(y1, t.value);
  for (const auto& t : plot.x_ticks) x0 = std::min(x0, t.value), x1 = std::max(x1, t.value);
  if (plot.x_ticks.empty()) x0 = std::min(x0, 0.0);
  if (x1 - x0 < 1e-12) x1 = x0 + 1;
  if (y1 - y0 < 1e-9) y1 = y0 + 1;
  const double legend_width = 170;
  const double W = 640 + legend_width, H = 400, L = 60, R = 20 + legend_width, T = 30, B = 50;
  auto px = [&](double x) { return L + (W - L - R) * (x - x0) / (x1 - x0); };
  auto py = [&](double y) { return T + (H - T - B) * (1.0 - (y - y0) / (y1 - y0)); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << (W - legend_width) / 2 << "\" y=\"18\" text-anchor=\"middle\">" << escape(plot.title) << "</text>\n";
  std::vector<PlotTick> ticks = plot.x_ticks;
  if (ticks.empty())
    for (int i = 0; i <= 4; ++i) {
      std::ostringstream label;
      label << x1 * i / 4;
      ticks.push_back({x1 * i / 4, label.str()});
    }
  std::vector<PlotTick> y_ticks = plot.y_ticks;
  if (y_ticks.empty())
    for (int i = 0; i <= 4; ++i) {
      const double y = y0 + (y1 - y0) * i / 4;
      std::ostringstream label;
      label << std::round(y * 100) / 100;
      y_ticks.push_back({y, label.str()});
    }
  for (const auto& t : y_ticks) {
    s << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(t.value) << "\" y2=\"" << py(t.value)
      << "\" stroke=\"#ddd\"/>\n";
    s << "<text x=\"" << L - 6 << "\" y=\"" << py(t.value) + 4 << "\" text-anchor=\"end\">" << escape(t.label)
      << "</text>\n";
  }
  for (const auto& t : ticks)
    s << "<text x=\"" << px(t.value) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << escape(t.label)
      << "</text>\n";
  s << "<text x=\"" << (W - legend_width) / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">"
    << escape(plot.x_label) << "</text>\n";
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const PlotSeries& ser = plot.series[k];
    const char* colour = kColours[k % std::size(kColours)];
    s << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"" << ser.stroke_width << "\" points=\"";
    for (const auto& p : ser.points) s << px(p[0]) << "," << py(p[1]) << " ";
    s << "\"/>\n";
    for (const auto& p : ser.points)
      if (ser.markers)
        s << "<circle cx=\"" << px(p[0]) << "\" cy=\"" << py(p[1]) << "\" r=\"" << ser.stroke_width + 0.5 << "\" fill=\""
        << colour << "\"/>\n";
    s << "<text x=\"" << W - legend_width + 10 << "\" y=\"" << T + 10 + 16 * double(k) << "\" fill=\"" << colour
      << "\">" << escape(ser.label) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

void write_svg(const LinePlot& plot, const std::filesystem::path& path) {
  write_file_atomically(path, [&](std::ostream& out) { out << render_svg(plot); });
}

}  // namespace crossmoe
