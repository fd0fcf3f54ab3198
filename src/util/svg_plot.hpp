#pragma once
// Line plots as standalone SVG files (the training loss curve, LV-Eval's score against length),
// so that reports need no plotting library.
#include <array>
#include <filesystem>
#include <string>
#include <vector>

namespace crossmoe {

struct PlotSeries {
  std::string label;
  std::vector<std::array<double, 2>> points;  // (x, y)
  double stroke_width = 1.5;
  bool markers = false;  // a dot on every point
};

struct PlotTick {
  double value;
  std::string label;
};

struct LinePlot {
  std::string title, x_label;
  std::vector<PlotTick> x_ticks;  // empty: five even ticks from 0 to the largest x
  // Empty: five even ticks over the y range. Given (e.g. a log scale: log values, labelled with
  // what they stand for), these ticks, and the y range covers them too.
  std::vector<PlotTick> y_ticks;
  std::vector<PlotSeries> series;
  bool y_from_zero = false;       // otherwise the y range is the data's
};

std::string render_svg(const LinePlot& plot);
// Written to a temporary file and renamed, so a reader never sees half a plot.
void write_svg(const LinePlot& plot, const std::filesystem::path& path);

}  // namespace crossmoe
