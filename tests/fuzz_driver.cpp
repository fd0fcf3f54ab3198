// main() for a fuzz target when libFuzzer is not available (g++ builds, CI): every seed file as
// is, then mutations of them until --iterations or --seconds runs out, each input under a time
// bound. The build adds AddressSanitizer and UndefinedBehaviorSanitizer, so an out-of-bounds read
// or undefined behaviour aborts the run. A failing input is written to fuzz-failure-<target>.bin
// in the working directory, to replay with `fuzz_<target> fuzz-failure-<target>.bin`.
//   fuzz_<target> [--iterations N] [--seconds S] [--timeout S] [--seed N] SEED_FILE_OR_DIR...
#include <fcntl.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "file_bytes.hpp"
#include "fuzz_harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

// Allocations past 2 GiB become std::bad_alloc instead of an abort, so that a reader sizing a
// buffer from an untrusted number shows up as "not our error type" with its input saved.
extern "C" const char* __asan_default_options() { return "allocator_may_return_null=1:max_allocation_size_mb=2048:handle_abort=1"; }

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string target_name = "fuzz";
std::string failure_path = "fuzz-failure.bin";
std::string current;  // the input being run, for the failure handlers

// Async-signal-safe: open, write and close only.
void save_current() {
  const int fd = open(failure_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  for (size_t done = 0; done < current.size();) {
    const ssize_t n = write(fd, current.data() + done, current.size() - done);
    if (n <= 0) break;
    done += size_t(n);
  }
  close(fd);
  const char note[] = "the failing input was written to ";
  (void)!write(2, note, sizeof note - 1);
  (void)!write(2, failure_path.data(), failure_path.size());
  (void)!write(2, "\n", 1);
}

void on_timeout(int) {
  const char message[] = "FAIL: an input ran past --timeout (a hang)\n";
  (void)!write(2, message, sizeof message - 1);
  save_current();
  _exit(3);
}

// Edge values and JSON fragments that readers get wrong; spliced into inputs.
const char* const kTokens[] = {
    "0", "-1", "-0", "1", "2", "255", "256", "65535", "65536", "2147483647", "2147483648", "-2147483649",
    "4294967296", "9223372036854775807", "18446744073709551615", "1e308", "1e999", "-1e999", "1.5", "0.0",
    "NaN", "null", "true", "false", "[]", "{}", "[[[[[[[[", "]]]]", "{\"\":", "\"\"", "\"", ",", ":", "[", "]",
    "{", "}", "\\", "\\u0000", "\\ud800", "\\udc00\\ud800", "\xff", "\xc3", "\xe4\xb8", "\xf0\x9f\x98",
    "\x00", "\n", "\r\n", "\t", " ", "[0]", "[-1]", "[1,2,3,4,5,6,7,8,9]", "{\"a\":1}", "\"x\"", "\"\\n\""};

std::string mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng, size_t max_size) {
  const auto below = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  const int count = 1 + int(rng() % 6);
  for (int m = 0; m < count; ++m) {
    switch (rng() % 10) {
      case 0:  // flip bits of one byte
        if (!s.empty()) s[below(s.size())] ^= char(1 + rng() % 255);
        break;
      case 1:  // insert an edge token
        s.insert(below(s.size() + 1), kTokens[rng() % std::size(kTokens)]);
        break;
      case 2: {  // replace a few bytes with an edge token
        const size_t at = below(s.size() + 1);
        s.replace(at, std::min(s.size() - at, below(9)), kTokens[rng() % std::size(kTokens)]);
        break;
      }
      case 3: {  // delete a range
        const size_t at = below(s.size() + 1);
        s.erase(at, std::min(s.size() - at, 1 + below(s.size() / 8 + 1)));
        break;
      }
      case 4: {  // copy a range elsewhere (repeats structure: longer lists, deeper nesting)
        if (s.empty()) break;
        const size_t from = below(s.size()), len = 1 + below(std::min<size_t>(s.size() - from, 256));
        s.insert(below(s.size() + 1), s.substr(from, len));
        break;
      }
      case 5:  // truncate
        s.resize(below(s.size() + 1));
        break;
      case 6: {  // a digit changed, or a number replaced by an edge value
        const size_t at = s.find_first_of("0123456789", below(s.size() + 1));
        if (at == std::string::npos) break;
        if (rng() % 2) {
          s[at] = char('0' + rng() % 10);
        } else {
          const size_t end = s.find_first_not_of("0123456789.eE+-", at);
          s.replace(at, (end == std::string::npos ? s.size() : end) - at, kTokens[rng() % 20]);
        }
        break;
      }
      case 7: {  // random bytes
        const size_t n = 1 + below(8), at = below(s.size() + 1);
        std::string bytes(n, '\0');
        for (char& c : bytes) c = char(rng());
        s.insert(at, bytes);
        break;
      }
      case 8: {  // splice in a piece of another seed
        const std::string& other = seeds[below(seeds.size())];
        if (other.empty()) break;
        const size_t from = below(other.size()), len = 1 + below(std::min<size_t>(other.size() - from, 512));
        const size_t at = below(s.size() + 1);
        s.replace(at, below(std::min<size_t>(s.size() - at, 64) + 1), other.substr(from, len));
        break;
      }
      default: {  // one character many times: deep nesting, long numbers, long strings
        const char run[] = "[{(\"0 a\\-\xe4";
        s.insert(below(s.size() + 1), std::string(1 + below(rng() % 4 == 0 ? 100000 : 64), run[below(sizeof run - 1)]));
      }
    }
  }
  if (s.size() > max_size) s.resize(max_size);
  return s;
}


[[noreturn]] void usage(const std::string& message) {
  std::fprintf(stderr,
               "error: %s\nusage: fuzz_<target> [--iterations N] [--seconds S] [--timeout S] [--seed N] "
               "SEED_FILE_OR_DIR...\n",
               message.c_str());
  std::exit(2);
}

// Runs one input; returns its duration in seconds. Exits the process on a non-Error exception.
double run_one(const std::string& input) {
  current = input;
  const auto start = Clock::now();
  try {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(current.data()), current.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: not crossmoe::Error but %s: %s\n", typeid(e).name(), e.what());
    save_current();
    std::exit(1);
  } catch (...) {
    std::fprintf(stderr, "FAIL: an exception that is not crossmoe::Error\n");
    save_current();
    std::exit(1);
  }
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  target_name = fs::path(argv[0]).filename().string();
  if (target_name.rfind("fuzz_", 0) == 0) target_name = target_name.substr(5);
  failure_path = "fuzz-failure-" + target_name + ".bin";
  long long iterations = 10000;
  double seconds = 10, timeout = 10;
  uint64_t seed = 1;
  std::vector<fs::path> seed_paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--iterations") iterations = std::stoll(value());
      else if (arg == "--seconds") seconds = std::stod(value());
      else if (arg == "--timeout") timeout = std::stod(value());
      else if (arg == "--seed") seed = std::stoull(value());
      else if (arg.rfind("--", 0) == 0) usage("unknown option " + arg);
      else seed_paths.push_back(arg);
    } catch (const std::logic_error&) {
      usage(arg + " needs a number");
    }
  }
  std::vector<std::string> seeds;
  for (const fs::path& p : seed_paths) {
    if (fs::is_directory(p)) {
      for (const auto& entry : fs::directory_iterator(p))
        if (entry.is_regular_file()) seeds.push_back(crossmoe::testing_files::bytes_of(entry.path()));
    } else if (fs::is_regular_file(p)) {
      seeds.push_back(crossmoe::testing_files::bytes_of(p));
    } else {
      usage("no seed file " + p.string());
    }
  }
  if (seeds.empty()) usage("no seed files given");
  size_t largest = 0;
  for (const std::string& s : seeds) largest = std::max(largest, s.size());
  const size_t max_size = std::max<size_t>(2 * largest, 1 << 16);

  std::signal(SIGALRM, on_timeout);
  const auto arm = [&] {
    itimerval t{};
    t.it_value.tv_sec = time_t(timeout);
    t.it_value.tv_usec = suseconds_t((timeout - double(time_t(timeout))) * 1e6);
    setitimer(ITIMER_REAL, &t, nullptr);
  };
  __sanitizer_set_death_callback(save_current);

  // The seeds are real files: the reader must accept at least one, or the mutations below would
  // only ever test its first check.
  double slowest = 0;
  for (const std::string& s : seeds) {
    arm();
    slowest = std::max(slowest, run_one(s));
  }
  const uint64_t seeds_rejected = crossmoe::fuzz::rejected;
  if (seeds_rejected == seeds.size()) {
    std::fprintf(stderr, "FAIL: the reader rejected every seed file\n");
    return 1;
  }

  std::mt19937_64 rng(seed);
  const auto start = Clock::now();
  long long tried = 0;
  while (tried < iterations && std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    const std::string input = mutate(seeds[rng() % seeds.size()], seeds, rng, max_size);
    arm();
    slowest = std::max(slowest, run_one(input));
    ++tried;
  }
  const itimerval off{};
  setitimer(ITIMER_REAL, &off, nullptr);
  std::printf(
      "%s: %zu seeds (%zu accepted), %lld mutated inputs in %.1f s (%llu rejected with crossmoe::Error), "
      "0 crashes, 0 sanitizer reports, 0 hangs (slowest input %.3f s, bound %.0f s)\n",
      target_name.c_str(), seeds.size(), size_t(seeds.size() - seeds_rejected), tried,
      std::chrono::duration<double>(Clock::now() - start).count(),
      static_cast<unsigned long long>(crossmoe::fuzz::rejected - seeds_rejected), slowest, timeout);
  return 0;
}
