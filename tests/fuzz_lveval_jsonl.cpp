// An LV-Eval jsonl file, as `eval check` and `eval lveval` read it: line by line, each bad line an
// error that names it, the others read.
#include "eval/lveval_data.hpp"
#include "fuzz_harness.hpp"

CROSSMOE_FUZZ_TARGET(bytes) {
  const crossmoe::eval::LvFile file = crossmoe::eval::read_lveval_jsonl(crossmoe::fuzz::write_scratch("data.jsonl", bytes));
  crossmoe::fuzz::check(file.samples.size() == file.sample_lines.size(), "a sample without its line number");
  // Counted as rejected: a file with a bad line (its message names the line and field).
  if (!file.errors.empty()) throw crossmoe::Error(file.errors.front().message);
}
