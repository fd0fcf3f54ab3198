// The SVG line plotter (util/svg_plot): where values land and which ticks it draws. The plot area
// spans y pixels 30 (top of the range) to 350 (bottom) and x pixels 60 to 620.
#include <gtest/gtest.h>

#include "util/svg_plot.hpp"

namespace crossmoe {
namespace {

LinePlot one_series() {
  LinePlot p;
  p.x_ticks = {{0, "a"}, {2, "b"}};
  p.series.push_back({"s", {{0, 1}, {2, 3}}, 1.5, false});
  return p;
}

TEST(SvgPlot, EvenYTicksOverTheDataByDefault) {
  const std::string svg = render_svg(one_series());
  EXPECT_NE(svg.find("points=\"60,350 620,30 \""), std::string::npos) << svg;
  for (const char* label : {">1</text>", ">1.5</text>", ">2</text>", ">2.5</text>", ">3</text>"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(SvgPlot, GivenYTicksReplaceTheEvenOnesAndWidenTheRange) {
  LinePlot p = one_series();
  p.y_ticks = {{0, "1 (log)"}, {4, "16"}};  // e.g. log2 values labelled with what they stand for
  const std::string svg = render_svg(p);
  // The range is 0..4 now: y = 1 at 270, y = 3 at 110.
  EXPECT_NE(svg.find("points=\"60,270 620,110 \""), std::string::npos) << svg;
  EXPECT_NE(svg.find("y1=\"350\" y2=\"350\""), std::string::npos) << svg;  // the grid line of tick 0
  EXPECT_NE(svg.find(">1 (log)</text>"), std::string::npos);
  EXPECT_NE(svg.find(">16</text>"), std::string::npos);
  EXPECT_EQ(svg.find(">1.5</text>"), std::string::npos);  // no even ticks besides
  EXPECT_EQ(svg.find(">2</text>"), std::string::npos);
}

}  // namespace
}  // namespace crossmoe
